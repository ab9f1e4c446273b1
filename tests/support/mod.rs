//! Shared harness for the end-to-end tests: start the real binaries as processes on
//! loopback, read the address they print, and kill them when the test ends.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A child process killed on drop, so a failing test leaves nothing behind.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` with stdout piped, forwarding each stdout line to the test.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn the binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[child] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no line containing {needle:?} within {timeout:?}: {e}"),
            }
        }
    }
}

/// A loopback address with a port free right now.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

pub fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

pub fn meridianctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridianctl"))
}

/// `GET path` over plain HTTP/1.1; the body, or None if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// The value of an unlabelled gauge or counter in a Prometheus exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `POST path` with a JSON body and extra headers over HTTP/1.1: (status, head, body).
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

/// A response header's value.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Starts `meridian pop` for catalog site `id` with one single-threaded CPU worker on
/// the real model, reporting to `control` (comma-separated endpoints); returns once warm.
pub fn start_pop(id: &str, control: &str) -> Proc {
    let mut cmd = meridian();
    cmd.args([
        "pop",
        "--pop-id",
        id,
        "--workers",
        "1",
        "--control",
        control,
    ])
    .args(["--listen", "127.0.0.1:0"])
    .env("MERIDIAN_POP__METRICS_LISTEN", free_addr().to_string())
    .env("MERIDIAN_POP__ENGINE__KV_MEMORY_BYTES", "67108864")
    .env("MERIDIAN_POP__ENGINE__THREADS", "1");
    let p = Proc::spawn(cmd);
    p.wait_for_line(&format!("pop {id} warm"), Duration::from_secs(120));
    p
}

/// Starts `meridian control` (memory store) on a free port, with `config` if given;
/// returns it with its gRPC URL once it listens.
pub fn start_control(config: Option<&std::path::Path>) -> (Proc, String) {
    let addr = free_addr();
    let mut cmd = meridian();
    cmd.args(["control", "--listen", &addr.to_string()])
        .env("MERIDIAN_CONTROL__METRICS_LISTEN", free_addr().to_string());
    if let Some(path) = config {
        cmd.args(["--config", path.to_str().expect("utf-8 path")]);
    }
    let p = Proc::spawn(cmd);
    p.wait_for_line("control plane listening", Duration::from_secs(30));
    (p, format!("http://{addr}"))
}

/// Starts `meridian router` at catalog site `site` on a free port, following `control`,
/// with extra `MERIDIAN_ROUTER__*` settings; returns it with its address once it listens.
pub fn start_router(control: &str, site: &str, env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let mut cmd = meridian();
    cmd.args(["router", "--listen", &addr.to_string()]).args([
        "--control",
        control,
        "--site",
        site,
    ]);
    for (k, v) in env {
        cmd.env(format!("MERIDIAN_ROUTER__{k}"), v);
    }
    let p = Proc::spawn(cmd);
    p.wait_for_line("router listening", Duration::from_secs(30));
    (p, addr)
}

/// Runs `meridianctl --control <control> <args>`, asserts it succeeded, returns stdout.
pub fn ctl(control: &str, args: &[&str]) -> String {
    let out = meridianctl()
        .args(["--control", control])
        .args(args)
        .output()
        .expect("run meridianctl");
    assert!(
        out.status.success(),
        "meridianctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
