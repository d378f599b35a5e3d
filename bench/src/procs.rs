//! Processes the suite starts: pinned to a CPU with `taskset`, each in its own process group
//! (so one signal reaches a server and its workers), told to die with the suite, and stopped
//! by their group id, never by name.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A command line as it is run, for SETUP.md: program and arguments, shell-quoted.
pub fn display(program: &Path, args: &[String]) -> String {
    std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started server: the `taskset` wrapper has exec'd it, so `pid` is the server itself.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
    pub command: String,
}

/// Starts `program args` pinned to `cpu`, with stdout and stderr in `log`.
pub fn spawn_pinned(
    cpu: u32,
    program: &Path,
    args: &[String],
    envs: &[(String, String)],
    log: &Path,
) -> io::Result<Server> {
    let out = fs::File::create(log)?;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(cpu.to_string())
        .arg(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours. If the suite dies
    // without cleaning up (SIGKILL), the kernel sends each server SIGTERM.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "starting taskset (util-linux) for {}: {e}",
                program.display()
            ),
        )
    })?;
    let pid = child.id();
    let envs = envs
        .iter()
        .map(|(k, v)| format!("{k}={} ", shell_quote(v)))
        .collect::<String>();
    Ok(Server {
        child,
        pid,
        log: log.to_path_buf(),
        command: format!("{envs}taskset -c {cpu} {}", display(program, args)),
    })
}

impl Server {
    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last non-empty line of the log: why it stopped, usually.
    pub fn last_log_line(&self) -> String {
        self.log_text()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    }

    /// The process and all its descendants (nginx's worker, gunicorn's workers), parent first.
    pub fn tree(&self) -> Vec<u32> {
        descendants(self.pid)
    }

    /// SIGTERM to the process group, SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pgid = self.pid as libc::pid_t;
        // SAFETY: plain syscall; the group is the one this server was started in.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Workers may outlive their master for a moment: the whole group goes.
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// `pid` and every process below it, parent before child.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| parent_of(&s))
            {
                parents.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        let mut kids: Vec<u32> = parents
            .iter()
            .filter(|&&(_, pp)| pp == parent)
            .map(|&(p, _)| p)
            .collect();
        kids.sort_unstable();
        out.extend(kids);
        i += 1;
    }
    out
}

/// The parent pid from the text of `/proc/PID/stat` (field 4, after the command in parens).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Waits until `ready` holds, the server exits, or `timeout` passes.
pub fn wait_ready(
    server: &mut Server,
    timeout: Duration,
    mut ready: impl FnMut(&Server) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = server.exited() {
            return Err(format!(
                "exited ({}) at start-up: {}",
                status_text(status),
                server.last_log_line()
            ));
        }
        if ready(server) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not ready after {:.0}s: {}",
                timeout.as_secs_f64(),
                server.last_log_line()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Whether something accepts connections at `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Output of a short command, stdout then stderr, first non-empty line; for versions.
pub fn first_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Set by SIGINT or SIGTERM: the suite stops after the run in progress and cleans up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parent_from_stat_with_odd_command_names() {
        assert_eq!(parent_of("123 (nginx) S 45 123 123 0"), Some(45));
        assert_eq!(parent_of("9 (a b) (c)) R 1 9 9"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("--static"), "--static");
        assert_eq!(shell_quote("/static/=/srv/x"), "/static/=/srv/x");
        assert_eq!(shell_quote("Accept-Encoding: br"), "'Accept-Encoding: br'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn finds_own_children() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let me = std::process::id();
        let tree = descendants(me);
        assert_eq!(tree[0], me);
        assert!(tree.contains(&child.id()), "{tree:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
