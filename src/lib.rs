//! nap: a Napster-style hybrid peer-to-peer file-sharing system.
//!
//! A central index (`index`) maps file names to the peers holding them; peers (`peer`) register
//! their shared folder, search the index and download directly from each other, verifying every
//! byte against the SHA-256 the index records. `protocol` holds the wire types both sides share.

pub mod clock;
pub mod hashing;
pub mod ids;
pub mod index;
pub mod memory;
pub mod net;
pub mod peer;
pub mod protocol;
pub mod threads;

/// Logs to stderr at `default`, or at the level `RUST_LOG` names.
pub fn init_logging(default: log::LevelFilter) {
    let _ = simple_logger::SimpleLogger::new()
        .with_level(default)
        .env()
        .init();
    quiet_foreign_panics();
}

/// Panics in threads nap did not start (tiny_http's, which panic when a descriptor cannot be
/// had for an accepted connection; the server starts accepting again, see `net`) are logged
/// in one line, without a backtrace: under a flood of connections they come by the hundred,
/// and capturing each backtrace (with `RUST_BACKTRACE` set) would slow the recovery. nap's own
/// threads are all named and keep the default report.
fn quiet_foreign_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        if thread.name().is_some() {
            default(info);
        } else {
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            log::error!("a thread of the HTTP library panicked at {at}: {what}");
        }
    }));
}
