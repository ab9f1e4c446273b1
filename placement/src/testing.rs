//! Harness for tests and benchmarks that need a real etcd: [`EtcdServer`] runs the
//! Debian `etcd` binary (package `etcd-server`) as a child process on loopback ports
//! with a throwaway data directory. Not used by the control plane itself; it is public so
//! that the root crate's end-to-end tests can run `meridian control` replicas against it.

use std::fs::OpenOptions;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::store::{EtcdStore, Store};

/// How long `start` and `restart` wait for etcd to answer requests.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Fresh port pairs tried when etcd exits at once (another process took a port).
const START_ATTEMPTS: usize = 3;

/// A single-member etcd cluster in a child process, killed on drop. Its data lives in a
/// temporary directory that survives [`stop`](Self::stop) and
/// [`restart`](Self::restart) and is removed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd on two free loopback ports and waits (up to 15 s) until it serves
    /// requests. Fails if `etcd` is not on `PATH`, exits early, or never gets ready; the
    /// error carries the end of its log.
    pub async fn start() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("meridian-etcd-")
            .tempdir()?;
        let mut last_error = None;
        let mut server = Self {
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        for _ in 0..START_ATTEMPTS {
            server.client_port = free_port()?;
            server.peer_port = free_port()?;
            if server.client_port == server.peer_port {
                continue;
            }
            match server.launch().await {
                Ok(()) => return Ok(server),
                // A port taken between picking it and etcd binding it makes etcd exit;
                // anything else (no binary, no readiness) will not get better.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("could not pick two free ports")))
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The process id while etcd runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temporary directory holding the data directory (`data/`) and the log
    /// (`etcd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log etcd writes its stdout and stderr to (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Kills etcd (SIGKILL, as a crash would; etcd syncs its log before it acknowledges
    /// a write, so acknowledged data survives) and waits for it to exit. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process is already gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Suspends etcd (SIGSTOP): its port still accepts connections but nothing answers,
    /// as with a partitioned or overloaded server. [`thaw`](Self::thaw) resumes it.
    pub fn freeze(&self) -> io::Result<()> {
        self.signal("-STOP")?;
        // The signal is only queued when `kill` returns; wait until every thread has
        // stopped, or a request sent at once may still be answered (seen on a loaded
        // machine).
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let stat = format!("/proc/{pid}/stat");
        for _ in 0..200 {
            match std::fs::read_to_string(&stat) {
                // The state follows the parenthesized command name.
                Ok(s)
                    if s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T')) =>
                {
                    return Ok(());
                }
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                // No /proc (not Linux): nothing to wait on.
                Err(_) => return Ok(()),
            }
        }
        Err(io::Error::other(format!(
            "etcd (pid {pid}) did not stop within 1 s"
        )))
    }

    /// Resumes etcd after [`freeze`](Self::freeze) (SIGCONT).
    pub fn thaw(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("etcd is not running"))?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {signal} {pid}: {status}")))
        }
    }

    /// Stops etcd if it runs, then starts it again on the same ports and data directory
    /// and waits until it serves requests.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.launch().await
    }

    async fn launch(&mut self) -> io::Result<()> {
        let data = self.dir.path().join("data");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("t={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "the `etcd` binary is not on PATH: install it (Debian/Ubuntu: \
                         `apt-get install etcd-server`)",
                    )
                } else {
                    io::Error::new(e.kind(), format!("starting etcd: {e}"))
                }
            })?;
        self.child = Some(child);
        if let Err(e) = self.wait_ready().await {
            self.stop();
            return Err(e);
        }
        Ok(())
    }

    /// Waits until the client port accepts connections and a read succeeds.
    async fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        let endpoints = [self.endpoint()];
        let mut last = String::from("nothing tried");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = log_tail(&self.log_path());
                let kind = if log.contains("address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("etcd exited with {status} while starting; its log ends:\n{log}"),
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match EtcdStore::connect(&endpoints, Duration::from_secs(1)).await {
                    Ok(store) => match store.get("/").await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "etcd at {} not ready within {READY_TIMEOUT:?} (last: {last}); its log ends:\n{}",
                self.endpoint(),
                log_tail(&self.log_path())
            ),
        ))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on right now (the OS picks it; etcd binds it soon
/// after, and `start` retries if another process was quicker).
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The last few lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
