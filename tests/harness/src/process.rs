//! Child processes that never outlive what started them: a `Proc` is killed when its handle
//! is dropped, also while a failing test or bench unwinds, and shows the end of what it
//! printed then; a `Fleet` is a group of them with a temporary folder.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::DEADLINE;

/// Lines of each stream shown when a handle is dropped during a panic.
const TAIL: usize = 100;

/// The lines a process has printed on stdout so far, and whether the stream has ended (the
/// process exited or closed it).
#[derive(Default)]
struct Output {
    state: Mutex<Stream>,
    grew: Condvar,
}

#[derive(Default)]
struct Stream {
    lines: Vec<String>,
    closed: bool,
}

impl Output {
    /// Reads `reader` line by line on a thread of its own until it ends. Bytes that are not
    /// UTF-8 are replaced, never a reason to stop reading (the writer would then block).
    fn collect(self: &Arc<Self>, reader: impl Read + Send + 'static) {
        let sink = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']).to_string();
                sink.state.lock().unwrap().lines.push(text);
                sink.grew.notify_all();
                line.clear();
            }
            sink.state.lock().unwrap().closed = true;
            sink.grew.notify_all();
        });
    }

    fn lines(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    /// Waits until the stream has ended, at most `timeout`.
    fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        while !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self.grew.wait_timeout(state, left).unwrap().0;
        }
    }
}

/// A child process: stdin a pipe, stdout collected line by line, stderr in a temporary log
/// file. Dropping the handle kills the process (resuming it first if it was stopped) and,
/// during a panic, prints the end of its output.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Output>,
    /// A file, not a pipe: a chatty process (debug logs, a bench's load) never waits for
    /// its reader, and the file is removed with the handle.
    log: tempfile::NamedTempFile,
    stopped: AtomicBool,
}

impl Proc {
    /// Starts `command` as `name`. Its stdin, stdout and stderr are set here, whatever the
    /// command said; its environment is the command's (nothing is added).
    pub fn start(name: &str, command: &mut Command) -> Proc {
        let log = tempfile::Builder::new()
            .prefix("nap-harness-")
            .suffix(".log")
            .tempfile()
            .expect("a temporary log file");
        let stderr = log.as_file().try_clone().expect("a handle on the log file");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                let program = Path::new(command.get_program());
                panic!("cannot start {}: {e}", program.display())
            });
        let stdout = Arc::new(Output::default());
        stdout.collect(child.stdout.take().expect("piped stdout"));
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            log,
            stopped: AtomicBool::new(false),
        }
    }

    /// Starts `program` with `args` as `name`, logging at info (both nap binaries' default
    /// when they serve; a peer's shell would log warnings only) unless `envs` set `RUST_LOG`.
    pub fn spawn(
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Proc {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied());
        Proc::start(name, &mut command)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line containing `needle`, starting at line `from`; returns its
    /// position and the line. Panics with the transcript after `timeout`, or once stdout has
    /// ended without such a line.
    pub fn wait_stdout_from(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> (usize, String) {
        let deadline = Instant::now() + timeout;
        let mut state = self.stdout.state.lock().unwrap();
        loop {
            let found = state
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.contains(needle));
            if let Some((i, line)) = found {
                return (i, line.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || state.closed {
                let closed = state.closed;
                drop(state);
                panic!(
                    "{}: no stdout line with {needle:?} within {timeout:?}{}\n{}",
                    self.name,
                    if closed { " (stdout closed)" } else { "" },
                    self.transcript()
                );
            }
            state = self.stdout.grew.wait_timeout(state, left).unwrap().0;
        }
    }

    /// The first stdout line containing `needle`, waiting for it up to `DEADLINE`.
    pub fn wait_stdout(&self, needle: &str) -> String {
        self.wait_stdout_from(0, needle, DEADLINE).1
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines()
    }

    /// Waits for a stderr line `found` accepts (the log file is read every 20 ms); panics
    /// with the transcript after `DEADLINE`.
    pub fn wait_stderr(&self, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.stderr_lines().into_iter().find(|l| found(l)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!("{}: no such stderr line\n{}", self.name, self.transcript());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything written to stderr so far, a line still being written included.
    pub fn stderr_text(&self) -> String {
        fs::read(self.log.path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The complete lines written to stderr so far (not one still being written).
    pub fn stderr_lines(&self) -> Vec<String> {
        let text = self.stderr_text();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(String::from).collect()
    }

    /// Everything the process printed, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout_lines().join("\n"),
            self.name,
            self.stderr_text().trim_end()
        )
    }

    /// The last `n` lines of each stream, saying how many came before.
    fn transcript_tail(&self, n: usize) -> String {
        let tail = |lines: Vec<String>| {
            let skipped = lines.len().saturating_sub(n);
            let mut shown = if skipped > 0 {
                format!("({skipped} earlier lines not shown)\n")
            } else {
                String::new()
            };
            shown.push_str(&lines[skipped..].join("\n"));
            shown
        };
        let stderr: Vec<String> = self.stderr_text().lines().map(String::from).collect();
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            tail(self.stdout_lines()),
            self.name,
            tail(stderr)
        )
    }

    /// Sends one line to the process's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a shell command and waits for a stdout line containing `needle` after it.
    pub fn command(&mut self, line: &str, needle: &str) -> String {
        let from = self.stdout_lines().len();
        self.send(line);
        self.wait_stdout_from(from, needle, DEADLINE).1
    }

    /// Closes stdin: the process reads end of input.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("the state of a child process")
    }

    /// Waits up to `DEADLINE` for the process to exit by itself; panics after it.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(DEADLINE)
    }

    /// Waits up to `timeout` for the process to exit by itself, then (a moment at most)
    /// until its stdout is read to the end; panics with the transcript after `timeout`.
    pub fn wait_exit_within(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                self.stdout.wait_closed(Duration::from_secs(1));
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends signal `name` ("STOP", "CONT", "TERM", ...) through kill(1), as std sends none
    /// but SIGKILL; panics if it could not be sent (a fault not delivered would go unseen).
    /// A process left stopped is resumed before it is killed on drop.
    pub fn signal(&self, name: &str) {
        assert!(self.send_signal(name), "kill -{name} {}", self.pid());
    }

    fn send_signal(&self, name: &str) -> bool {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            self.stopped.store(name == "STOP", Ordering::SeqCst);
        }
        sent
    }

    /// Waits until every thread of the process is stopped (state T in /proc), since a
    /// SIGSTOP takes effect as each thread is next scheduled, not when kill(2) returns;
    /// false if that does not happen within `timeout` (or /proc cannot tell).
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        let state = |stat: String| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        };
        while started.elapsed() < timeout {
            let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid())) else {
                return false;
            };
            let all_stopped = tasks.flatten().all(|task| {
                fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(state)
                    .is_some_and(|s| s == "T" || s == "t")
            });
            if all_stopped {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    /// SIGKILL, as a crash: no chance to unregister or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stopped.load(Ordering::SeqCst) {
            self.send_signal("CONT");
        }
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.transcript_tail(TAIL));
        }
    }
}

/// A handle to one process of a `Fleet`.
#[derive(Clone, Copy, Debug)]
pub struct ProcId(usize);

/// The processes of one measurement or scenario, and a temporary folder for whatever they
/// need on disk (data directories, shared folders). Every process has its stdin closed.
/// Dropping the fleet kills them all, then removes the folder.
pub struct Fleet {
    // Declared first, so dropped first: no process still writes into the folder when it goes.
    procs: Vec<Proc>,
    root: tempfile::TempDir,
}

impl Fleet {
    /// A fleet whose folder's name starts with `prefix`.
    pub fn new(prefix: &str) -> Fleet {
        Fleet {
            procs: Vec::new(),
            root: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("a temporary directory"),
        }
    }

    /// The temporary folder, removed with the fleet.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Starts `command` as `name` (see `Proc::start`); does not wait for anything.
    pub fn start(&mut self, name: &str, command: &mut Command) -> ProcId {
        self.adopt(Proc::start(name, command))
    }

    /// Takes a process started elsewhere (as `start_pair` does) into the fleet.
    pub fn adopt(&mut self, mut proc: Proc) -> ProcId {
        proc.close_stdin();
        self.procs.push(proc);
        ProcId(self.procs.len() - 1)
    }

    pub fn proc(&self, id: ProcId) -> &Proc {
        &self.procs[id.0]
    }

    pub fn proc_mut(&mut self, id: ProcId) -> &mut Proc {
        &mut self.procs[id.0]
    }

    pub fn pid(&self, id: ProcId) -> u32 {
        self.procs[id.0].pid()
    }

    /// What the process has written to stderr so far.
    pub fn log(&self, id: ProcId) -> String {
        self.procs[id.0].stderr_text()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self, id: ProcId) {
        self.procs[id.0].kill();
    }

    /// Sends signal `name` (see `Proc::signal`).
    pub fn signal(&mut self, id: ProcId, name: &str) {
        self.procs[id.0].signal(name);
    }
}
