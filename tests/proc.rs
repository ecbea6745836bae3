//! Child processes of the real `msggate` binary for tests: a command with a clean environment,
//! a guard that reads stdout and stderr on threads, waits that are always bounded, and a kill on
//! drop, so a misbehaving binary fails a test instead of hanging or outliving it.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_msggate");

/// How long any expected exit, listen line or socket read may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A `msggate` command with no `MSGGATE_*` variable inherited from the test runner.
pub fn msggate(args: &[&str]) -> Command {
    via(&[], args)
}

/// `wrapper... msggate args...` (e.g. under `prlimit`), stdio piped, no `MSGGATE_*` inherited.
pub fn via(wrapper: &[&str], args: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(BIN);
            cmd
        }
        None => Command::new(BIN),
    };
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MSGGATE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// What a finished child left behind.
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running child whose output is read by background threads; killed and reaped on drop.
pub struct Proc {
    child: Child,
    stdout_lines: mpsc::Receiver<String>,
    /// The whole of stderr, sent once the child closes it (that is, exits).
    stderr: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn msggate");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (line_tx, stdout_lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            let _ = err_tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
        Proc { child, stdout_lines, stderr: stderr_rx }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the child to exit on its own and collects its output.
    pub fn finish_within(&mut self, limit: Duration) -> Exited {
        let stderr = match self.stderr.recv_timeout(limit) {
            Ok(s) => s,
            Err(_) => {
                let _ = self.child.kill();
                panic!("msggate did not exit within {limit:?}; killed it");
            }
        };
        // stderr is closed, so the process is exiting: this wait is short.
        let status = self.child.wait().expect("wait for msggate");
        let mut stdout = String::new();
        loop {
            match self.stdout_lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    stdout.push_str(&line);
                    stdout.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout still open after msggate exited"),
            }
        }
        Exited { status, stdout, stderr }
    }

    /// Reads the `msggate listening on ADDR` line; on failure kills the child and shows its stderr.
    pub fn listen_addr(&mut self) -> SocketAddr {
        match self.stdout_lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                let addr = line
                    .strip_prefix("msggate listening on ")
                    .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"));
                addr.parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
            }
            Err(e) => {
                let _ = self.child.kill();
                let out = self.finish_within(PATIENCE);
                panic!("no listen line ({e:?}); msggate exited with {}; stderr:\n{}", out.status, out.stderr);
            }
        }
    }
}

impl Proc {
    /// Reads the `msggate admin listening on ADDR` line that follows the listen line.
    pub fn admin_addr(&mut self) -> SocketAddr {
        let line = self.stdout_lines.recv_timeout(PATIENCE).expect("an admin line on stdout");
        let addr = line
            .strip_prefix("msggate admin listening on ")
            .unwrap_or_else(|| panic!("unexpected second stdout line {line:?}"));
        addr.parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command expected to exit on its own.
pub fn run(cmd: &mut Command) -> Exited {
    Proc::spawn(cmd).finish_within(PATIENCE)
}

/// An example program built next to the binary (`cargo test` builds the examples), with the
/// same clean environment and piped stdio as [`msggate`].
pub fn example(name: &str, args: &[&str]) -> Command {
    let dir = std::path::Path::new(BIN).parent().expect("the binary has a directory");
    let mut cmd = Command::new(dir.join("examples").join(name));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

impl Proc {
    /// The next stdout line, within [`PATIENCE`].
    pub fn next_line(&mut self) -> String {
        self.stdout_lines.recv_timeout(PATIENCE).unwrap_or_else(|e| panic!("no stdout line: {e:?}"))
    }
}
