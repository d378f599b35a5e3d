//! Files on disk: mounts and routing, request-path decoding, the Django manifest, content
//! types, and the one place that opens a file beneath a mount root.

pub mod manifest;
pub mod mime;
pub mod mount;
pub mod open;
pub mod path;

/// A quarter of the process's descriptor limit, split over `workers`. Each worker's open-file
/// cache gets one such share and its cached memfds another, so that neither can use up the
/// descriptors that connections and upstream sockets need (the other half).
pub fn descriptor_share(workers: usize) -> usize {
    // SAFETY: getrlimit with a pointer to a live rlimit.
    let soft = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur
        } else {
            1024
        }
    };
    usize::try_from(soft / 4).unwrap_or(usize::MAX) / workers.max(1)
}
