//! The machine as the core plan sees it: online CPUs, NUMA nodes, where NICs and PCI devices
//! sit, NIC queues and their interrupts; and pinning a thread to cores. Read from /sys and
//! /proc; anything missing (containers, other kernels) reads as unknown, never as an error.

#![allow(unsafe_code)]

use std::io;
use std::path::Path;

/// A NUMA node and its CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: usize,
    pub cpus: Vec<usize>,
}

/// A network interface, as far as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    /// The NUMA node of its PCI device; `None` for virtual interfaces or single-node machines.
    pub numa_node: Option<usize>,
    pub rx_queues: usize,
    pub tx_queues: usize,
    /// Each of its interrupts with the CPUs it may run on.
    pub irqs: Vec<(u32, Vec<usize>)>,
}

/// The CPUs this process may run on (its affinity mask, which containers and taskset narrow).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and its size is passed.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return online_cpus();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads bit `cpu` of `set`; `cpu < CPU_SETSIZE`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// The online CPUs (/sys/devices/system/cpu/online).
pub fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_else(|_| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        })
}

/// The NUMA nodes with CPUs; one node holding every online CPU when the kernel shows none.
pub fn numa_nodes() -> Vec<Node> {
    let mut nodes: Vec<Node> = std::fs::read_dir("/sys/devices/system/node")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_prefix("node")?.parse().ok()?;
            let cpus = parse_cpu_list(&std::fs::read_to_string(e.path().join("cpulist")).ok()?);
            (!cpus.is_empty()).then_some(Node { id, cpus })
        })
        .collect();
    nodes.sort_by_key(|n| n.id);
    if nodes.is_empty() {
        nodes.push(Node {
            id: 0,
            cpus: online_cpus(),
        });
    }
    nodes
}

/// The physical network interfaces (those with a device), loopback and virtual ones left out.
pub fn nics() -> Vec<Nic> {
    let interrupts = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let mut nics: Vec<Nic> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let path = e.path();
            let count = |prefix: &str| {
                std::fs::read_dir(path.join("queues"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|q| q.file_name().to_string_lossy().starts_with(prefix))
                    .count()
            };
            Some(Nic {
                numa_node: numa_node_of(&path.join("device")),
                rx_queues: count("rx-"),
                tx_queues: count("tx-"),
                irqs: irqs_of(&interrupts, &name),
                name,
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// The NUMA node of a PCI device directory (`numa_node` is -1 on single-node machines).
pub fn numa_node_of(device: &Path) -> Option<usize> {
    std::fs::read_to_string(device.join("numa_node"))
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| usize::try_from(n).ok())
}

/// Pins the calling thread to `cpus`. An empty list is refused.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() || cpus.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no valid CPU to pin to",
        ));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu < CPU_SETSIZE` was checked above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a live cpu_set_t and its size is passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes a file-size limit (RLIMIT_FSIZE) an error on the write that crosses it (EFBIG)
/// instead of a SIGXFSZ that kills the process: a recording that hits a quota fails alone and
/// the meetings go on.
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec the call writes into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Parses a kernel CPU list such as `0-3,8,10-11`. Malformed parts are skipped.
pub fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>())
                    && a <= b
                    && b - a < 65_536
                {
                    cpus.extend(a..=b);
                }
            }
            None => {
                if let Ok(c) = part.trim().parse() {
                    cpus.push(c);
                }
            }
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

/// The interrupts of `/proc/interrupts` whose name mentions `nic`, with their CPU lists.
fn irqs_of(interrupts: &str, nic: &str) -> Vec<(u32, Vec<usize>)> {
    interrupts
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w.starts_with(nic)))
        .filter_map(|l| l.trim().split(':').next()?.parse::<u32>().ok())
        .map(|irq| {
            let cpus = std::fs::read_to_string(format!("/proc/irq/{irq}/smp_affinity_list"))
                .map(|s| parse_cpu_list(&s))
                .unwrap_or_default();
            (irq, cpus)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("3-1,x,5"), [5]);
        assert_eq!(parse_cpu_list("0-99999999999"), Vec::<usize>::new());
    }

    #[test]
    fn this_machine_has_cpus_and_a_node() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        let nodes = numa_nodes();
        assert!(!nodes.is_empty());
        assert!(
            allowed
                .iter()
                .all(|c| nodes.iter().any(|n| n.cpus.contains(c)))
        );
    }

    #[test]
    fn pinning_narrows_the_thread_and_bad_sets_are_refused() {
        let first = allowed_cpus()[0];
        std::thread::spawn(move || {
            pin_current_thread(&[first]).unwrap();
            assert_eq!(allowed_cpus(), [first]);
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(&[]).is_err());
        assert!(pin_current_thread(&[usize::MAX]).is_err());
    }
}
