//! The gateway's own one-line messages (a server that did not start or stopped, a
//! tool list that failed, an audit write that failed): on this process's stderr, or in
//! the file given to [`messages_to`]. `warden run` gives its servers' log, so that they
//! do not land on the terminal where the agent's screen is.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

static MESSAGES: OnceLock<Mutex<File>> = OnceLock::new();

/// From now on this process's gateway messages go to `file` (appended to, one line
/// each) instead of stderr. Once per process: `false` if they already go to a file.
pub fn messages_to(file: File) -> bool {
    MESSAGES.set(Mutex::new(file)).is_ok()
}

/// One message line where [`messages_to`] said, else on stderr.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    match MESSAGES.get() {
        Some(file) => {
            // One write per line, so that lines of concurrent writers do not interleave.
            let _ = crate::lock(file).write_all(format!("{line}\n").as_bytes());
        }
        None => eprintln!("{line}"),
    }
}

/// `eprintln!` for the gateway's messages: see [`say`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say::say(format_args!($($arg)*))
    };
}
