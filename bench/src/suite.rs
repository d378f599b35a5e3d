//! What the comparison measures: the contenders, the workloads, and which workload applies to
//! which contender. Pure data; starting and driving them is `contender.rs` and `run.rs`.

/// One way of serving the same Django project's files (or view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Contender {
    /// bypass on io_uring with its defaults (the hot-asset cache on, once it exists).
    Bypass,
    /// bypass with `--engine epoll`.
    BypassEpoll,
    /// bypass with `--cache-size 0`: every request goes to the file system.
    BypassNoCache,
    /// nginx, one worker, the Django deployment guides' static configuration.
    Nginx,
    /// static-web-server from crates.io.
    Sws,
    /// gunicorn (sync workers) running Django with WhiteNoise's middleware.
    Gunicorn,
    /// nginx proxying every request to that gunicorn.
    NginxGunicorn,
    /// bypass serving the files itself and proxying the rest (`--upstream`) to that gunicorn.
    BypassGunicorn,
    /// The null responder on io_uring: one pre-built answer per request head.
    Ceiling,
}

impl Contender {
    pub const ALL: [Contender; 9] = [
        Contender::Bypass,
        Contender::BypassEpoll,
        Contender::BypassNoCache,
        Contender::Nginx,
        Contender::Sws,
        Contender::Gunicorn,
        Contender::NginxGunicorn,
        Contender::BypassGunicorn,
        Contender::Ceiling,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Contender::Bypass => "bypass",
            Contender::BypassEpoll => "bypass-epoll",
            Contender::BypassNoCache => "bypass-nocache",
            Contender::Nginx => "nginx",
            Contender::Sws => "static-web-server",
            Contender::Gunicorn => "gunicorn",
            Contender::NginxGunicorn => "nginx-gunicorn",
            Contender::BypassGunicorn => "bypass-gunicorn",
            Contender::Ceiling => "ceiling",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Contender::Bypass => "bypass",
            Contender::BypassEpoll => "bypass epoll",
            Contender::BypassNoCache => "bypass no-cache",
            Contender::Nginx => "nginx",
            Contender::Sws => "static-web-server",
            Contender::Gunicorn => "gunicorn+WhiteNoise",
            Contender::NginxGunicorn => "nginx→gunicorn",
            Contender::BypassGunicorn => "bypass→gunicorn",
            Contender::Ceiling => "ceiling",
        }
    }

    pub fn from_id(id: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.id() == id)
    }

    /// Whether requests reach gunicorn (so the suite must start it).
    pub fn needs_gunicorn(self) -> bool {
        matches!(
            self,
            Contender::Gunicorn | Contender::NginxGunicorn | Contender::BypassGunicorn
        )
    }
}

/// What a measured request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// ~300 B CSS by its hashed name, no Accept-Encoding.
    SmallCss,
    /// The ~300 B CSS again, 16 requests in flight per connection (HTTP/1.1 pipelining): what
    /// a server costs per request once system calls are shared by many.
    PipelinedCss,
    /// ~23 KB CSS by its hashed name, with a browser's Accept-Encoding (bypass answers br).
    MediumCssBr,
    /// ~300 KB JPEG by its hashed name.
    Jpeg,
    /// The 20 MiB upload in MEDIA_ROOT.
    Media20Mb,
    /// The ~23 KB CSS again, revalidated: If-None-Match and If-Modified-Since as the
    /// contender's own 200 gave them, so the answer is 304.
    Revalidate304,
    /// Zipf-weighted over every hashed name in the real manifest, with a browser-like mix of
    /// Accept-Encoding values.
    ZipfMix,
    /// A small Django view (`/hello/`), through whatever sits in front of gunicorn.
    DjangoView,
    /// The ~300 B CSS at a fixed rate, half of nginx's peak in the same suite: open-loop
    /// latency percentiles.
    LatencyOpen,
}

/// A browser's Accept-Encoding (Chrome, Firefox and Safari send these codings).
pub const BROWSER_ACCEPT_ENCODING: &str = "gzip, deflate, br, zstd";

/// The Zipf mix's Accept-Encoding values and weights: current browsers, older browsers, and
/// clients that send none (bots, scripts).
pub const ACCEPT_ENCODING_MIX: &[(&str, u32)] = &[
    ("gzip, deflate, br, zstd", 6),
    ("gzip, deflate, br", 3),
    ("none", 1),
];

/// The static workloads the CI gate averages over (CPU per request, bypass relative to nginx):
/// the core's file paths, not the 20 MB copy nor the mixes.
pub const GATE_WORKLOADS: [Workload; 4] = [
    Workload::SmallCss,
    Workload::MediumCssBr,
    Workload::Jpeg,
    Workload::Revalidate304,
];

impl Workload {
    pub const ALL: [Workload; 9] = [
        Workload::SmallCss,
        Workload::PipelinedCss,
        Workload::MediumCssBr,
        Workload::Jpeg,
        Workload::Media20Mb,
        Workload::Revalidate304,
        Workload::ZipfMix,
        Workload::DjangoView,
        Workload::LatencyOpen,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Workload::SmallCss => "small-css",
            Workload::PipelinedCss => "pipelined-css",
            Workload::MediumCssBr => "medium-css-br",
            Workload::Jpeg => "jpeg",
            Workload::Media20Mb => "media-20mb",
            Workload::Revalidate304 => "revalidate-304",
            Workload::ZipfMix => "zipf-mix",
            Workload::DjangoView => "django-view",
            Workload::LatencyOpen => "latency-open",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Workload::SmallCss => "~300 B CSS",
            Workload::PipelinedCss => "~300 B CSS, 16 pipelined",
            Workload::MediumCssBr => "~23 KB CSS, br",
            Workload::Jpeg => "~300 KB JPEG",
            Workload::Media20Mb => "20 MB media",
            Workload::Revalidate304 => "304 revalidation",
            Workload::ZipfMix => "Zipf mix",
            Workload::DjangoView => "Django view",
            Workload::LatencyOpen => "open loop, 50% nginx peak",
        }
    }

    pub fn from_id(id: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.id() == id)
    }

    /// Connections bypass-load keeps open.
    pub fn connections(self) -> u32 {
        match self {
            // Each response is 20 MiB: a few streams fill the loopback.
            Workload::Media20Mb => 4,
            _ => 32,
        }
    }

    /// Requests in flight per connection.
    pub fn pipeline(self) -> u32 {
        match self {
            Workload::PipelinedCss => 16,
            _ => 1,
        }
    }

    pub fn open_loop(self) -> bool {
        self == Workload::LatencyOpen
    }

    /// The static file the workload asks for, by its name before hashing.
    pub fn static_name(self) -> Option<&'static str> {
        match self {
            Workload::SmallCss | Workload::PipelinedCss | Workload::LatencyOpen => {
                Some("demo/small.css")
            }
            Workload::MediumCssBr | Workload::Revalidate304 => Some("demo/medium.css"),
            Workload::Jpeg => Some("demo/photo.jpg"),
            _ => None,
        }
    }

    /// Extra request header fields (besides `Host`), before the validators of a 304 workload.
    pub fn accept_encoding(self) -> Option<&'static str> {
        match self {
            Workload::MediumCssBr | Workload::Revalidate304 => Some(BROWSER_ACCEPT_ENCODING),
            _ => None,
        }
    }

    pub fn expected_status(self) -> u16 {
        match self {
            Workload::Revalidate304 => 304,
            _ => 200,
        }
    }
}

/// Whether `c` is measured on `w`. Servers of files do not run Django views; bypass→gunicorn
/// serves files exactly as bypass does (only the rest goes upstream), so it runs the view
/// only; the ceiling has one answer, so a mix of files means nothing for it.
pub fn applies(c: Contender, w: Workload) -> bool {
    match w {
        Workload::DjangoView => matches!(
            c,
            Contender::Gunicorn
                | Contender::NginxGunicorn
                | Contender::BypassGunicorn
                | Contender::Ceiling
        ),
        Workload::ZipfMix => !matches!(c, Contender::Ceiling | Contender::BypassGunicorn),
        // gunicorn's sync workers answer one request per connection: nothing to pipeline.
        Workload::PipelinedCss => !c.needs_gunicorn(),
        _ => c != Contender::BypassGunicorn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for c in Contender::ALL {
            assert_eq!(Contender::from_id(c.id()), Some(c));
        }
        for w in Workload::ALL {
            assert_eq!(Workload::from_id(w.id()), Some(w));
        }
        assert_eq!(Contender::from_id("apache"), None);
    }

    #[test]
    fn every_contender_runs_something_and_every_workload_has_a_peer() {
        for c in Contender::ALL {
            assert!(Workload::ALL.iter().any(|&w| applies(c, w)), "{c:?}");
        }
        for w in Workload::ALL {
            let n = Contender::ALL.iter().filter(|&&c| applies(c, w)).count();
            assert!(n >= 3, "{w:?} has {n} contenders");
        }
        assert!(!applies(Contender::Nginx, Workload::DjangoView));
        assert!(applies(Contender::NginxGunicorn, Workload::DjangoView));
        assert!(!applies(Contender::Ceiling, Workload::ZipfMix));
    }
}
