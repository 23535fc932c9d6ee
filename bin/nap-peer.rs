//! `nap-peer`: share a folder, search the index, download from other peers.

use std::io::{self, Write};
use std::path::PathBuf;

use argh::FromArgs;
use nap::peer::client::IndexClient;
use nap::peer::config::{index_list, seconds};
use nap::peer::{shell, ConfigError, PeerConfig, PeerNode};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// A nap peer: shares a folder, finds files through the index, downloads them from other peers.
#[derive(FromArgs)]
struct Args {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Serve(Serve),
    Search(Search),
}

/// Share a folder and run the interactive shell (or, with --daemon, just serve).
#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
struct Serve {
    /// the shared folder
    #[argh(option, default = "PathBuf::from(\".\")")]
    dir: PathBuf,
    /// where the file server listens, host:port (port 0 picks a free one)
    #[argh(option, default = "String::from(\"127.0.0.1:0\")")]
    listen: String,
    /// host:port other peers should use, if not the listen address (0.0.0.0, NAT)
    #[argh(option)]
    advertise: Option<String>,
    /// index servers, comma-separated, in order of preference
    #[argh(option, default = "String::from(\"http://127.0.0.1:7070\")")]
    index: String,
    /// seconds an index call may take per phase before the next server is tried
    #[argh(option, default = "2.0")]
    index_timeout: f64,
    /// seconds between rescans of the shared folder
    #[argh(option, default = "10.0")]
    rescan_interval: f64,
    /// concurrent uploads to other peers
    #[argh(option, default = "4")]
    upload_slots: usize,
    /// most requests in flight, and open connections, the file server takes (default 256,
    /// or what the open-file limit holds)
    #[argh(option)]
    max_connections: Option<usize>,
    /// seconds a connection to the file server may stay open without a request
    #[argh(option, default = "30.0")]
    idle_timeout: f64,
    /// seconds within which a request must arrive and each part of a file be read (and
    /// 16 KiB/s over each such span), else the connection closes and its upload slot frees;
    /// also the longest a download waits for a free slot
    #[argh(option, default = "10.0")]
    request_timeout: f64,
    /// run without the shell, until killed
    #[argh(switch)]
    daemon: bool,
}

/// Search the index once and print the results.
#[derive(FromArgs)]
#[argh(subcommand, name = "search")]
struct Search {
    /// what to look for: an exact name or keywords
    #[argh(positional)]
    text: String,
    /// index servers, comma-separated, in order of preference
    #[argh(option, default = "String::from(\"http://127.0.0.1:7070\")")]
    index: String,
    /// seconds an index call may take per phase
    #[argh(option, default = "2.0")]
    index_timeout: f64,
    /// most results to show
    #[argh(option, default = "50")]
    limit: usize,
    /// print the raw JSON answer
    #[argh(switch)]
    json: bool,
}

/// A flag the peer cannot run with: says so and exits 2.
fn refuse(e: ConfigError) -> ! {
    eprintln!("nap-peer: {e}");
    std::process::exit(2)
}

/// The flags as a peer configuration, checked by the library.
fn serve_config(args: &Serve) -> Result<PeerConfig, ConfigError> {
    let config = PeerConfig {
        dir: args.dir.clone(),
        listen: args.listen.clone(),
        advertise: args.advertise.clone(),
        index: index_list(&args.index)?,
        index_timeout: seconds("index-timeout", args.index_timeout)?,
        rescan_interval: seconds("rescan-interval", args.rescan_interval)?,
        upload_slots: args.upload_slots,
        max_connections: args.max_connections.unwrap_or_else(|| {
            nap::net::connections::fitting_or_warn(nap::peer::DEFAULT_MAX_CONNECTIONS)
        }),
        idle_timeout: seconds("idle-timeout", args.idle_timeout)?,
        request_timeout: seconds("request-timeout", args.request_timeout)?,
    };
    config.validate()?;
    Ok(config)
}

fn main() {
    let args: Args = argh::from_env();
    let code = match args.command {
        Command::Serve(serve) => run_serve(serve),
        Command::Search(search) => run_search(search),
    };
    std::process::exit(code);
}

fn run_serve(args: Serve) -> i32 {
    // The shell owns the terminal: only warnings go to stderr unless RUST_LOG says otherwise.
    nap::init_logging(if args.daemon {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    });
    let config = serve_config(&args).unwrap_or_else(|e| refuse(e));
    let signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("nap-peer: cannot handle signals: {e}");
            return 1;
        }
    };
    let node = match PeerNode::start(config) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("nap-peer: cannot start: {e}");
            return 1;
        }
    };
    let peer = node.peer();
    println!(
        "nap peer serving {} at {} (index: {})",
        peer.store.dir().display(),
        peer.addr(),
        peer.index.servers().join(", ")
    );
    let signalled = nap::net::signals(signals);
    if args.daemon {
        // Serves until SIGINT or SIGTERM, then leaves the index and stops.
        let signal = signalled.recv().unwrap_or_default();
        log::info!("signal {signal}: leaving the index");
        node.stop();
        return 0;
    }
    // The shell reads stdin on this thread; a signal leaves the index from another one.
    let leaving = node.peer().clone();
    let _ = nap::threads::spawn("leave-on-signal", move || {
        if signalled.recv().is_ok() {
            if let Err(e) = leaving.unregister() {
                log::warn!("could not unregister: {e}");
            }
            println!();
            std::process::exit(0);
        }
    });
    println!("type help for commands");
    let mut out = io::stdout();
    let result = shell::run(peer, io::stdin().lock(), &mut out);
    let _ = out.flush();
    node.stop();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nap-peer: {e}");
            1
        }
    }
}

fn run_search(args: Search) -> i32 {
    nap::init_logging(log::LevelFilter::Warn);
    let servers = index_list(&args.index).unwrap_or_else(|e| refuse(e));
    let timeout = seconds("index-timeout", args.index_timeout).unwrap_or_else(|e| refuse(e));
    let client = IndexClient::new(servers, timeout);
    match client.search(&args.text, args.limit) {
        Ok(found) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&found).unwrap_or_default()
            );
            0
        }
        Ok(found) => {
            if found.results.is_empty() && found.total == 0 {
                println!("No match for {:?}", args.text);
            }
            // The count goes to stderr: a script reading the lines sees results only.
            let shown = found.results.len() as u64;
            if found.total > shown {
                eprintln!(
                    "{shown} of {}, best first (--limit N lists more)",
                    nap::peer::shell::matches(found.total, found.total_exact)
                );
            }
            for r in found.results {
                let holders: Vec<&str> = r.holders.iter().map(|h| h.addr.as_str()).collect();
                println!(
                    "{}\tv{}\t{} B\t{}",
                    r.name,
                    r.version,
                    r.size,
                    holders.join(",")
                );
            }
            0
        }
        Err(e) => {
            eprintln!("nap-peer: search failed: {e}");
            1
        }
    }
}
