//! Whether this process can serve faults with userfaultfd (the route, its
//! features), found out once.

use super::*;

/// What the process-level probe found: a route to a userfaultfd serving
/// kernel faults, and the features it offers.
#[derive(Debug)]
pub(super) struct Probe {
    pub(super) route: Route,
    pub(super) features: u64,
    pub(super) found: String,
}

/// Tries both routes once per process. A failure for lack of resources
/// right now (too many open files, no memory) is reported as such and not
/// remembered: it says nothing about privileges, and the next map may work.
pub(super) fn probe() -> Result<&'static Probe, String> {
    static PROBE: OnceLock<Result<Probe, String>> = OnceLock::new();
    if let Some(p) = PROBE.get() {
        return p.as_ref().map_err(Clone::clone);
    }
    let first = run_probe();
    if let Err(why) = &first
        && let Some(e) = transient_failure()
    {
        return Err(format!(
            "cannot create a userfaultfd right now ({e}); try again when the process has \
             file descriptors and memory to spare (details: {why})"
        ));
    }
    PROBE.get_or_init(|| first).as_ref().map_err(Clone::clone)
}

/// Whether creating a userfaultfd fails for a passing lack of resources
/// (EMFILE, ENFILE, ENOMEM) rather than for privileges: the error if so.
pub(super) fn transient_failure() -> Option<std::io::Error> {
    [Route::Syscall, Route::DevNode].into_iter().find_map(|r| {
        uffd::available(r).err().filter(|e| {
            matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
            )
        })
    })
}

pub(super) fn unprivileged_sysctl() -> Option<String> {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()
        .map(|s| s.trim().to_string())
}

pub(super) fn run_probe() -> Result<Probe, String> {
    let sysctl = unprivileged_sysctl();
    let move_note = |features: u64| {
        if features & u64::from(g::UFFD_FEATURE_MOVE) != 0 {
            "; UFFDIO_MOVE available (sequential fills become 2 MiB huge pages)"
        } else {
            "; no UFFDIO_MOVE (Linux < 6.8): fills use UFFDIO_COPY into 4 KiB pages"
        }
    };
    let syscall_err = match uffd::available(Route::Syscall) {
        Ok(api) => {
            let why = if sysctl.as_deref() == Some("1") {
                "vm.unprivileged_userfaultfd=1"
            } else {
                "this process has CAP_SYS_PTRACE"
            };
            return Ok(Probe {
                route: Route::Syscall,
                features: api.features,
                found: format!(
                    "userfaultfd(2) serves kernel-mode faults ({why}){}",
                    move_note(api.features)
                ),
            });
        }
        Err(e) => e,
    };
    let dev_err = match uffd::available(Route::DevNode) {
        Ok(api) => {
            return Ok(Probe {
                route: Route::DevNode,
                features: api.features,
                found: format!(
                    "/dev/userfaultfd is accessible and serves kernel-mode faults{}",
                    move_note(api.features)
                ),
            });
        }
        Err(e) => e,
    };
    let syscall_why = match syscall_err.raw_os_error() {
        Some(libc::EPERM) => format!(
            "userfaultfd(2) without UFFD_USER_MODE_ONLY was refused (EPERM): the process lacks \
             CAP_SYS_PTRACE and vm.unprivileged_userfaultfd is {}",
            sysctl.as_deref().unwrap_or("unreadable")
        ),
        Some(libc::ENOSYS) => {
            "userfaultfd(2) does not exist here (ENOSYS: kernel without CONFIG_USERFAULTFD, or a \
             seccomp filter)"
                .to_string()
        }
        _ => format!("userfaultfd(2) failed: {syscall_err}"),
    };
    let dev_why = match dev_err.raw_os_error() {
        Some(libc::ENOENT) => "/dev/userfaultfd does not exist (Linux < 6.1)".to_string(),
        _ => {
            let mode = rustix::fs::stat("/dev/userfaultfd")
                .map(|st| format!(" (mode {:o}, owner uid {})", st.st_mode & 0o777, st.st_uid))
                .unwrap_or_default();
            format!("/dev/userfaultfd cannot be used: {dev_err}{mode}")
        }
    };
    Err(format!(
        "no userfaultfd that serves kernel-mode faults (needed so that a syscall such as write(2) \
         reading an untouched page does not fail with EFAULT): {syscall_why}; {dev_why}. \
         Enable one: run as root or with CAP_SYS_PTRACE, set `sysctl vm.unprivileged_userfaultfd=1`, \
         or give this user read-write access to /dev/userfaultfd (for example a udev rule or \
         `setfacl -m u:USER:rw /dev/userfaultfd`)"
    ))
}

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    let p = probe()?;
    let Some(req) = req else {
        return Ok(p.found.clone());
    };
    if req.populate {
        let len = req.map_len() as u64;
        if let Some(avail) = procfs::memory_available().filter(|&a| len > a) {
            return Err(format!(
                "populate(true) would copy {len} bytes, more than the memory available \
                 ({avail} bytes); map without populate so that only touched pages are copied"
            ));
        }
    }
    Ok(p.found.clone())
}
