//! Systems under test as child processes: start one (optionally pinned with `taskset`), wait
//! for its readiness signal, and kill it when the handle drops.
//!
//! - [`start_simgate`]: `simgate run --config FILE`; readiness is simgate's own `ready` line on
//!   stdout, after one `listening NAME ADDR` line per listener (so listeners may bind port 0) and
//!   the `admin ADDR` and `radius ADDR` lines when those are configured.
//! - [`Child::spawn`] + [`wait_for_port`]: peers (nginx, haproxy, mosquitto, stunnel) that print
//!   nothing useful; readiness is their listening port accepting a connection.
//! - [`find_binary`]: locate a peer executable or fail with the `apt-get install` line.
//!
//! What it does NOT do: restart crashed processes, or kill anything it did not start (only the
//! child's own pid is signalled).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Spawns `program args` (prefixed with `taskset -c CPUS` when `cpus` is set), stdout and
    /// stderr to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        cpus: Option<&str>,
        log: &Path,
    ) -> Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = pinned(program, cpus);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// Process id (with `taskset`, the same process: taskset execs the program).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the end of its log) if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "{} exited ({status}); log {}:\n{tail}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Waits until `addr` accepts a TCP connection (the process's readiness signal), failing early
/// when the process exits and after `timeout`.
pub fn wait_for_port(child: &mut Child, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        child.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} did not listen on {addr} within {timeout:?}", child.name);
        }
        // Polling a port: the peer gives no other signal. 20 ms between attempts.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running simgate and the addresses of its listeners by name.
#[derive(Debug)]
pub struct Simgate {
    /// The process.
    pub child: Child,
    /// `listening NAME ADDR` lines.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// The `admin ADDR` line (absent with `admin = "off"`).
    pub admin: Option<SocketAddr>,
    /// The `radius ADDR` line (with `[radius]`).
    pub radius: Option<SocketAddr>,
}

/// Starts `simgate run --config CONFIG` and waits for its `ready` line.
pub fn start_simgate(
    binary: &Path,
    config: &Path,
    cpus: Option<&str>,
    log: &Path,
) -> Result<Simgate> {
    let stderr = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut command = pinned(binary, cpus);
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut process = command
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let stdout = process
        .stdout
        .take()
        .ok_or_else(|| anyhow!("simgate stdout not captured"))?;
    let mut child = Child {
        name: "simgate".into(),
        child: process,
        log: log.to_owned(),
    };
    let mut listeners = BTreeMap::new();
    let (mut admin, mut radius) = (None, None);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let Some(line) = lines.next() else {
            child.check_alive()?;
            bail!(
                "simgate closed stdout before `ready`; see {}",
                log.display()
            );
        };
        let line = line?;
        if line == "ready" {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["listening", name, addr] => {
                listeners.insert((*name).to_owned(), addr.parse()?);
            }
            ["admin", addr] => admin = Some(addr.parse()?),
            ["radius", addr] => radius = Some(addr.parse()?),
            _ => {}
        }
    }
    // Keep draining stdout so simgate never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Simgate {
        child,
        listeners,
        admin,
        radius,
    })
}

/// Finds `name` in the usual binary directories (`PATH`, `/usr/sbin`, `/sbin`), or fails with
/// the Debian package to install.
pub fn find_binary(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("`{name}` not found: install it with `apt-get install {package}`")
}

/// A TCP port free on 127.0.0.1 right now (bound and released; another process could take it
/// before the caller binds — acceptable on a benchmark box, retried by nobody).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
