//! Landlock, the second filesystem layer (after the mount namespace): the whole session
//! root is read/execute-only except the paths mounted writable, the home tmpfs, `/tmp`,
//! `/dev` and `/proc`'s writable files. On ABI >= 6 the agent is also scoped: it cannot
//! connect to abstract Unix sockets or signal processes created outside its domain.
//!
//! Decision (docs/decisions/0002-sandbox.md): a kernel without Landlock fails preflight —
//! THREATS.md lists "Landlock absent, command runs anyway" as a fail-open setup. Features
//! newer than the kernel's ABI are applied best-effort (the namespaces already cover them).

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use std::path::PathBuf;

/// The kernel's Landlock ABI version, 0 when unavailable.
pub(crate) fn kernel_abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only
    // returns the ABI version or an error.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if v < 0 { 0 } else { v as i32 }
}

/// Restricts the calling process. `rw`: session paths that stay writable.
pub(crate) fn restrict(rw: &[PathBuf]) -> Result<(), String> {
    let abi = ABI::from(kernel_abi());
    if abi == ABI::Unsupported {
        return Err("Landlock is not available in this kernel".into());
    }
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(|e| format!("landlock: {e}"))?;
    let scopes: BitFlags<Scope> = Scope::from_all(abi);
    if !scopes.is_empty() {
        ruleset = ruleset
            .scope(scopes)
            .map_err(|e| format!("landlock scope: {e}"))?;
    }
    let mut created = ruleset.create().map_err(|e| format!("landlock: {e}"))?;
    let root = PathFd::new("/").map_err(|e| format!("landlock: open /: {e}"))?;
    created = created
        .add_rule(PathBeneath::new(root, read))
        .map_err(|e| format!("landlock rule /: {e}"))?;
    for p in rw {
        // A path that does not exist (e.g. removed by the caller) is simply not granted.
        let Ok(fd) = PathFd::new(p) else { continue };
        let meta = std::fs::metadata(p).map_err(|e| format!("landlock: {}: {e}", p.display()))?;
        let access = if meta.is_dir() {
            all
        } else {
            all & file_access(abi)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| format!("landlock rule {}: {e}", p.display()))?;
    }
    let status = created
        .restrict_self()
        .map_err(|e| format!("landlock: {e}"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("Landlock ruleset was not enforced".into());
    }
    Ok(())
}

fn file_access(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_file(abi)
}
