//! Starting each contender on the same collectstatic tree, pinned to CPU 0, and telling apart a
//! contender that is *missing* (the binary is not installed, or bypass does not have the flag
//! yet: it exits 2 naming it) from one that *failed* (anything else).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::procs::{self, Server};
use crate::suite::{Contender, Workload};

/// The CPU every server is confined to; bypass-load runs on the other.
pub const SERVER_CPU: u32 = 0;
pub const LOAD_CPU: u32 = 1;

/// Where everything is.
#[derive(Clone, Debug)]
pub struct Env {
    pub repo: PathBuf,
    /// What scripts/collectstatic built: `static/`, `media/`, `project/`.
    pub tree: PathBuf,
    pub bypass: PathBuf,
    pub load: PathBuf,
    /// This program (the null responder is its `null` subcommand).
    pub bench: PathBuf,
    pub nginx: Option<PathBuf>,
    pub sws: Option<PathBuf>,
    pub venv: PathBuf,
    /// Scratch: configurations, logs, pre-built responses.
    pub work: PathBuf,
}

/// The repository the running binary was built in (`REPO/target/release/NAME`, or
/// `.../release/deps/NAME` for a bench), if any.
fn built_in_repo() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(3)
        .take(2)
        .find(|r| r.join("bench/Cargo.toml").exists())
        .map(Path::to_path_buf)
}

/// The first `name` on PATH, in `extra` directories, or at a Debian location.
fn which(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where scripts/setup installs static-web-server: `$BYPASS_TOOLS`, else
/// `~/.cache/bypass-tools` (outside the checkout, so fresh clones reuse the 7-minute build).
pub fn tools_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("BYPASS_TOOLS") {
        return PathBuf::from(t);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("bypass-tools")
}

impl Env {
    /// Everything where scripts/setup --compare puts it: `repo` (default: the checkout this
    /// binary was built in, else the current directory), its `target/release` (or
    /// `$CARGO_TARGET_DIR/release`), `scripts/.cache/demo`, `.venv` (or `$BYPASS_VENV`); nginx
    /// and static-web-server from PATH or the tools directory.
    pub fn discover(repo: Option<PathBuf>) -> Result<Env, String> {
        let repo = match repo.or_else(built_in_repo) {
            Some(r) => r,
            None => std::env::current_dir().map_err(|e| format!("current directory: {e}"))?,
        };
        let release = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target"))
            .join("release");
        Ok(Env {
            tree: repo.join("scripts/.cache/demo"),
            bypass: release.join("bypass"),
            load: release.join("bypass-load"),
            bench: release.join("bypass-bench"),
            nginx: which("nginx", &[]),
            sws: which("static-web-server", &[tools_dir().join("bin")]),
            venv: std::env::var_os("BYPASS_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join(".venv")),
            work: std::env::temp_dir().join(format!("bypass-bench.{}", std::process::id())),
            repo,
        })
    }

    pub fn static_root(&self) -> PathBuf {
        self.tree.join("static")
    }
    pub fn media_root(&self) -> PathBuf {
        self.tree.join("media")
    }
    pub fn manifest(&self) -> PathBuf {
        self.static_root().join("staticfiles.json")
    }
    pub fn django_dir(&self) -> PathBuf {
        self.repo.join("bench/django")
    }
    pub fn hello_page(&self) -> PathBuf {
        self.django_dir().join("benchsite/hello.html")
    }
}

/// How starting a contender went.
pub enum Started {
    Up(Running),
    /// Not available on this build or machine; the reason, one line.
    Missing(String),
    Failed(String),
}

/// A contender that answers on `addr`.
pub struct Running {
    pub contender: Contender,
    pub addr: SocketAddr,
    /// Where pipelined workloads go, when the contender is tuned differently for them (nginx:
    /// `tcp_nopush off`, its best setting for pipelined clients).
    pub pipelined_addr: Option<SocketAddr>,
    /// The processes it owns (gunicorn, shared by three contenders, is owned by the suite).
    pub servers: Vec<Server>,
    /// Whether requests also cost gunicorn's CPU (its pids are charged to this contender).
    pub uses_gunicorn: bool,
    /// Exact command lines, and configuration files by name, for SETUP.md.
    pub commands: Vec<String>,
    pub configs: Vec<(String, String)>,
}

impl Running {
    /// Whether every process it owns is still alive; the reason if not.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for s in &mut self.servers {
            if let Some(status) = s.exited() {
                return Err(format!(
                    "died ({}): {}",
                    procs::status_text(status),
                    s.last_log_line()
                ));
            }
        }
        Ok(())
    }
}

/// A started contender that answers on 127.0.0.1:`port`.
fn up(c: Contender, port: u16, server: Server, uses_gunicorn: bool) -> Started {
    Started::Up(Running {
        contender: c,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pipelined_addr: None,
        commands: vec![server.command.clone()],
        servers: vec![server],
        uses_gunicorn,
        configs: Vec::new(),
    })
}

/// Starts `program args` pinned, logging to `<work>/<id>.log`; up once `port` accepts.
fn start_accepting(
    env: &Env,
    c: Contender,
    program: &Path,
    args: &[String],
    port: u16,
) -> std::io::Result<Started> {
    let log = env.work.join(format!("{}.log", c.id()));
    let mut server = procs::spawn_pinned(SERVER_CPU, program, args, &[], &log)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Ok(
        match procs::wait_ready(&mut server, Duration::from_secs(10), |_| {
            procs::accepts(addr)
        }) {
            Ok(()) => up(c, port, server, false),
            Err(why) => Started::Failed(why),
        },
    )
}

/// bypass's command line for a contender, listening on `port`.
pub fn bypass_args(
    env: &Env,
    c: Contender,
    port: u16,
    upstream: Option<SocketAddr>,
) -> Vec<String> {
    let mut args: Vec<String> = vec!["--workers".into(), "1".into()];
    args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
    args.extend([
        "--static".into(),
        format!("/static/={}", env.static_root().display()),
    ]);
    args.extend([
        "--media".into(),
        format!("/media/={}", env.media_root().display()),
    ]);
    let engine = if c == Contender::BypassEpoll {
        "epoll"
    } else {
        "uring"
    };
    args.extend(["--engine".into(), engine.into()]);
    if c == Contender::BypassNoCache {
        args.extend(["--cache-size".into(), "0".into()]);
    }
    if let Some(up) = upstream {
        args.extend(["--upstream".into(), up.to_string()]);
    }
    args
}

/// Whether a bypass that exited at start-up says it lacks what was asked: an option it does not
/// know (`--cache-size`, `--upstream` before they land) or an engine that is not built.
pub fn says_missing(code: Option<i32>, line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    code == Some(2)
        && (l.contains("invalid option")
            || l.contains("unknown option")
            || l.contains("unexpected argument")
            || l.contains("not built"))
}

/// Starts contender `c` (not the ceiling, which is started per workload by [`start_ceiling`]).
pub fn start(env: &Env, c: Contender, gunicorn: Option<SocketAddr>) -> Started {
    let result = match c {
        Contender::Bypass | Contender::BypassEpoll | Contender::BypassNoCache => {
            start_bypass(env, c, None)
        }
        Contender::BypassGunicorn => match gunicorn {
            Some(up) => start_bypass(env, c, Some(up)),
            None => return Started::Failed("gunicorn did not start".into()),
        },
        Contender::Nginx => start_nginx(env, c, None),
        Contender::NginxGunicorn => match gunicorn {
            Some(up) => start_nginx(env, c, Some(up)),
            None => return Started::Failed("gunicorn did not start".into()),
        },
        Contender::Sws => start_sws(env),
        Contender::Gunicorn => match gunicorn {
            Some(addr) => Ok(Started::Up(Running {
                contender: c,
                addr,
                pipelined_addr: None,
                servers: Vec::new(),
                uses_gunicorn: true,
                commands: Vec::new(),
                configs: Vec::new(),
            })),
            None => return Started::Failed("gunicorn did not start".into()),
        },
        Contender::Ceiling => unreachable!("the ceiling is started per workload"),
    };
    result.unwrap_or_else(|e| Started::Failed(e.to_string()))
}

fn start_bypass(env: &Env, c: Contender, upstream: Option<SocketAddr>) -> std::io::Result<Started> {
    let port = procs::free_port()?;
    let args = bypass_args(env, c, port, upstream);
    let log = env.work.join(format!("{}.log", c.id()));
    let mut server = procs::spawn_pinned(SERVER_CPU, &env.bypass, &args, &[], &log)?;
    let ready = procs::wait_ready(&mut server, Duration::from_secs(10), |s| {
        s.log_text().contains("bypass: listening on")
    });
    if let Err(why) = ready {
        let code = server.exited().and_then(|s| s.code());
        let line = server.last_log_line();
        return Ok(if says_missing(code, &line) {
            Started::Missing(line)
        } else {
            Started::Failed(why)
        });
    }
    Ok(up(c, port, server, upstream.is_some()))
}

/// nginx's configuration: static (the Django deployment guides' tuned static block, one worker)
/// or a proxy in front of gunicorn.
/// nginx's configuration: the static server on `port` and, for pipelined clients, the same on
/// `pipelined_port` with `tcp_nopush off` (with it on, nginx holds a pipelined batch's replies
/// back for ~40 ms); or, with `upstream`, a proxy to it on `port`.
pub fn nginx_conf(
    env: &Env,
    dir: &Path,
    port: u16,
    pipelined_port: u16,
    upstream: Option<SocketAddr>,
) -> String {
    let d = dir.display();
    // As root, workers would run as `nobody` and could not read a tree under /root.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    let server = match upstream {
        None => {
            let locations = format!(
                "        location /static/ {{
            alias {}/;
            expires 1y;
        }}
        location /media/ {{
            alias {}/;
        }}",
                env.static_root().display(),
                env.media_root().display()
            );
            format!(
                "    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
    server {{
        listen 127.0.0.1:{pipelined_port};
        tcp_nopush off;
{locations}
    }}"
            )
        }
        Some(up) => format!(
            "    upstream django {{
        server {up};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://django;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}"
        ),
    };
    format!(
        "{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid 60s;
    open_file_cache_errors on;
    # Serve WhiteNoise's .gz siblings; Debian's nginx-light has no brotli_static.
    gzip_static on;
    access_log off;
    # bypass-load keeps its connections for the whole run; the default (1000 requests per
    # connection) would make nginx alone pay for reconnects.
    keepalive_requests 100000000;
{server}
}}
"
    )
}

fn start_nginx(env: &Env, c: Contender, upstream: Option<SocketAddr>) -> std::io::Result<Started> {
    let Some(nginx) = env.nginx.as_ref() else {
        return Ok(Started::Missing(
            "nginx is not installed (scripts/setup installs nginx-light)".into(),
        ));
    };
    let dir = env.work.join(c.id());
    fs::create_dir_all(&dir)?;
    let port = procs::free_port()?;
    let mut pipelined_port = procs::free_port()?;
    while pipelined_port == port {
        pipelined_port = procs::free_port()?;
    }
    let conf = nginx_conf(env, &dir, port, pipelined_port, upstream);
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, &conf)?;
    let args: Vec<String> = vec![
        "-c".into(),
        conf_path.display().to_string(),
        "-p".into(),
        dir.display().to_string(),
        "-e".into(),
        dir.join("error.log").display().to_string(),
    ];
    let mut server = procs::spawn_pinned(
        SERVER_CPU,
        nginx,
        &args,
        &[],
        &env.work.join(format!("{}.log", c.id())),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Ready once the worker exists and the port accepts.
    let ready = procs::wait_ready(&mut server, Duration::from_secs(10), |s| {
        s.tree().len() >= 2 && procs::accepts(addr)
    });
    if let Err(why) = ready {
        let errors = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        let last = errors.lines().last().unwrap_or("").to_string();
        return Ok(Started::Failed(format!("{why} {last}").trim().to_string()));
    }
    let mut started = up(c, port, server, upstream.is_some());
    if let Started::Up(r) = &mut started {
        r.configs.push((format!("{} nginx.conf", c.id()), conf));
        if upstream.is_none() {
            r.pipelined_addr = Some(SocketAddr::from(([127, 0, 0, 1], pipelined_port)));
        }
    }
    Ok(started)
}

/// static-web-server's command line. It serves one root at `/`, so the root is a directory
/// holding `static` and `media` links to the tree's two roots.
pub fn sws_args(root: &Path, port: u16) -> Vec<String> {
    [
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--root",
        &root.display().to_string(),
        // One worker thread, as nginx has one worker and bypass --workers 1.
        "--threads-multiplier",
        "1",
        // Precompressed siblings (.br, .gz) as WhiteNoise wrote them; no compression on the fly.
        "--compression-static",
        "true",
        "--compression",
        "false",
        "--directory-listing",
        "false",
        "--log-level",
        "error",
    ]
    .map(String::from)
    .to_vec()
}

fn start_sws(env: &Env) -> std::io::Result<Started> {
    let Some(sws) = env.sws.as_ref() else {
        return Ok(Started::Missing(
            "static-web-server is not installed (scripts/setup --compare builds it from crates.io)"
                .into(),
        ));
    };
    let root = env.work.join("sws-root");
    fs::create_dir_all(&root)?;
    for (name, target) in [("static", env.static_root()), ("media", env.media_root())] {
        let link = root.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, link)?;
    }
    let port = procs::free_port()?;
    start_accepting(env, Contender::Sws, sws, &sws_args(&root, port), port)
}

/// Starts gunicorn (sync workers) on the demo project with the bench site's settings
/// (WhiteNoise middleware, `/hello/`, media through Django).
pub fn start_gunicorn(env: &Env, workers: u32) -> Result<(Server, SocketAddr), String> {
    let gunicorn = env.venv.join("bin/gunicorn");
    if !gunicorn.exists() {
        return Err(format!(
            "{} is missing (scripts/setup installs it from scripts/requirements.txt)",
            gunicorn.display()
        ));
    }
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let args: Vec<String> = vec![
        "--workers".into(),
        workers.to_string(),
        "--worker-class".into(),
        "sync".into(),
        "--bind".into(),
        addr.to_string(),
        "--backlog".into(),
        "2048".into(),
        "--chdir".into(),
        env.tree.join("project").display().to_string(),
        "--pythonpath".into(),
        env.django_dir().display().to_string(),
        "--log-level".into(),
        "warning".into(),
        // gunicorn 27 opens one control socket per user (~/.gunicorn/gunicorn.ctl) unless
        // told not to: two instances on one host would fight over it.
        "--no-control-socket".into(),
        "benchsite.wsgi:application".into(),
    ];
    let envs = vec![
        (
            "DJANGO_SETTINGS_MODULE".to_string(),
            "benchsite.settings".to_string(),
        ),
        (
            "BYPASS_DEMO_OUT".to_string(),
            env.tree.display().to_string(),
        ),
    ];
    let mut server = procs::spawn_pinned(
        SERVER_CPU,
        &gunicorn,
        &args,
        &envs,
        &env.work.join("gunicorn.log"),
    )
    .map_err(|e| e.to_string())?;
    let want = 1 + workers as usize;
    procs::wait_ready(&mut server, Duration::from_secs(30), |s| {
        s.tree().len() >= want && procs::accepts(addr)
    })?;
    Ok((server, addr))
}

/// The ceiling's one answer for workload `w`: the status, a Content-Type and Content-Length,
/// and the body a correct server sends for it (read from the tree), so the bytes on the wire
/// match the real contenders' without any of their work.
pub fn ceiling_response(
    status: u16,
    content_type: &str,
    encoding: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        304 => "Not Modified",
        _ => "Whatever",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nServer: null\r\n");
    if status == 304 {
        head += "ETag: \"null\"\r\n\r\n";
        return head.into_bytes();
    }
    head += &format!("Content-Type: {content_type}\r\n");
    if let Some(e) = encoding {
        head += &format!("Content-Encoding: {e}\r\n");
    }
    head += &format!("Content-Length: {}\r\n\r\n", body.len());
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Starts the null responder with `response` for workload `w`.
pub fn start_ceiling(env: &Env, w: Workload, response: &[u8]) -> Started {
    let go = || -> std::io::Result<Started> {
        let file = env.work.join(format!("ceiling-{}.http", w.id()));
        fs::write(&file, response)?;
        let port = procs::free_port()?;
        let args: Vec<String> = vec![
            "null".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--response".into(),
            file.display().to_string(),
        ];
        start_accepting(env, Contender::Ceiling, &env.bench, &args, port)
    };
    go().unwrap_or_else(|e| Started::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            repo: "/r".into(),
            tree: "/t".into(),
            bypass: "/r/target/release/bypass".into(),
            load: "/r/target/release/bypass-load".into(),
            bench: "/r/target/release/bypass-bench".into(),
            nginx: Some("/usr/sbin/nginx".into()),
            sws: None,
            venv: "/r/.venv".into(),
            work: "/tmp/w".into(),
        }
    }

    #[test]
    fn bypass_variants_differ_only_in_their_flag() {
        let e = env();
        let base = bypass_args(&e, Contender::Bypass, 8000, None).join(" ");
        assert_eq!(
            base,
            "--workers 1 --listen 127.0.0.1:8000 --static /static/=/t/static \
             --media /media/=/t/media --engine uring"
        );
        let epoll = bypass_args(&e, Contender::BypassEpoll, 8000, None).join(" ");
        assert!(epoll.ends_with("--engine epoll"));
        let nocache = bypass_args(&e, Contender::BypassNoCache, 8000, None).join(" ");
        assert!(nocache.ends_with("--engine uring --cache-size 0"));
        let up = SocketAddr::from(([127, 0, 0, 1], 9000));
        let proxy = bypass_args(&e, Contender::BypassGunicorn, 8000, Some(up)).join(" ");
        assert!(proxy.ends_with("--upstream 127.0.0.1:9000"));
    }

    #[test]
    fn missing_is_exit_2_naming_the_flag_or_engine() {
        assert!(says_missing(
            Some(2),
            "bypass: invalid option '--cache-size' (see bypass --help)"
        ));
        assert!(says_missing(
            Some(2),
            "bypass: the epoll engine is not built yet; use --engine uring"
        ));
        assert!(!says_missing(Some(2), "bypass: address in use"));
        assert!(!says_missing(Some(1), "bypass: invalid option '--x'"));
        assert!(!says_missing(None, "killed"));
    }

    #[test]
    fn nginx_static_conf_has_the_tuned_directives() {
        let e = env();
        let conf = nginx_conf(&e, Path::new("/tmp/n"), 8081, 8083, None);
        for d in [
            "worker_processes 1;",
            "sendfile on;",
            "tcp_nopush on;",
            "open_file_cache max=10000",
            "gzip_static on;",
            "access_log off;",
            "listen 127.0.0.1:8081;",
            "listen 127.0.0.1:8083;\n        tcp_nopush off;",
            "alias /t/static/;",
            "alias /t/media/;",
        ] {
            assert!(conf.contains(d), "{d} missing from\n{conf}");
        }
        let up = SocketAddr::from(([127, 0, 0, 1], 9000));
        let proxy = nginx_conf(&e, Path::new("/tmp/n"), 8082, 8084, Some(up));
        assert!(proxy.contains("server 127.0.0.1:9000;"));
        assert!(proxy.contains("keepalive 16;"));
        assert!(proxy.contains("proxy_http_version 1.1;"));
        assert!(!proxy.contains("alias"));
    }

    #[test]
    fn ceiling_answers_are_well_framed() {
        let r = ceiling_response(200, "text/css", Some("br"), b"abc");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Encoding: br\r\n"));
        assert!(text.ends_with("Content-Length: 3\r\n\r\nabc"));
        let r = ceiling_response(304, "text/css", None, b"ignored");
        assert!(String::from_utf8(r).unwrap().ends_with("\r\n\r\n"));
    }
}
