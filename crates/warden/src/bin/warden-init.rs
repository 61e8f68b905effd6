//! `warden-init`: PID 1 of every `warden run` session (see `warden_sandbox::init_main`).
//!
//! A program of its own rather than `warden` re-executed, because every session starts
//! one: this binary is a small fraction of `warden`'s size, with a fraction of its
//! relocations and none of its crypto or allocator start-up, so the kernel and the
//! dynamic loader have less to do before the session's namespaces are built. `warden run`
//! starts it from the directory `warden` itself is in and refuses to run a session when it
//! is missing. It is not a command of its own: started without the init marker, it exits
//! with status 2.

fn main() {
    warden_sandbox::init_main()
}
