//! Integration tests for warden-policy, as one binary.

mod smoke {
    use std::path::Path;
    use warden_policy::*;

    #[test]
    fn presets_and_errors_print() {
        for p in Preset::ALL {
            let r = Policy::parse(preset_source(p), "x.toml", Path::new("."));
            match r {
                Ok(pol) => println!("{} ok\n{}", pol.id(), pol.to_cedar()),
                Err(e) => println!("{e}"),
            }
        }
        let bad = "version = 1\n[network]\nalow = [\"api.github.com\"]\nallow = [\"a..b\", \"*.x.*\"]\n[[network.http]]\nhost = \"x\"\nmethods = [1]\n[[credentials]]\nname = \"a\"\n";
        match Policy::parse(bad, "policy.toml", Path::new(".")) {
            Ok(_) => panic!("should fail"),
            Err(e) => println!("{e}"),
        }
    }
}
