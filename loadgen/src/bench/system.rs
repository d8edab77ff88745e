//! What the benchmark reads from the operating system and from the workers: memory and CPU time
//! of processes (`/proc`, Linux), the machine's CPU time, and a worker's Prometheus counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on every Linux architecture
/// the kernel exports it for).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process's resident memory, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// Now (`VmRSS`).
    pub(crate) rss: u64,
    /// Highest so far (`VmHWM`).
    pub(crate) peak: u64,
}

/// `/proc/<pid>/status` memory figures (`pid` `None`: this process); `None` where `/proc` is
/// not available.
pub(crate) fn memory(pid: Option<u32>) -> Option<Memory> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    parse_status(&std::fs::read_to_string(path).ok()?)
}

fn parse_status(text: &str) -> Option<Memory> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let n: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
        Some(n * 1024)
    };
    Some(Memory {
        rss: kib("VmRSS:")?,
        peak: kib("VmHWM:")?,
    })
}

/// CPU time (user + system) a process has used (`pid` `None`: this process).
pub(crate) fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat(text: &str) -> Option<Duration> {
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so count from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / TICKS_PER_SECOND,
    ))
}

/// The machine's CPU time so far: (busy, total), summed over every core (`/proc/stat`).
pub(crate) fn machine_cpu() -> Option<(Duration, Duration)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_proc_stat(text: &str) -> Option<(Duration, Duration)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    let secs = |t: u64| Duration::from_secs_f64(t as f64 / TICKS_PER_SECOND);
    Some((secs(total.saturating_sub(idle)), secs(total)))
}

/// Logical CPUs of the machine.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A worker's counters from `GET /metrics` (Prometheus text), summed per metric name over
/// label sets — except a histogram's `_bucket` lines, kept apart by bound as `name{le="…"}`.
pub(crate) async fn scrape(http: SocketAddr) -> std::io::Result<BTreeMap<String, f64>> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(http).await?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "GET /metrics timed out")
        })??;
    Ok(parse_metrics(&text))
}

fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with("shardtally_") {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let Some(value) = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        else {
            continue;
        };
        let name = &line[..name_end];
        let key = match line.split_once("le=\"") {
            Some((_, rest)) if name.ends_with("_bucket") => {
                let le = rest.split('"').next().unwrap_or_default();
                format!("{name}{{le=\"{le}\"}}")
            }
            _ => name.to_owned(),
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_memory_is_read_in_bytes() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss: 1024 * 1024,
                peak: 2048 * 1024
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn stat_cpu_time_counts_user_and_system() {
        // pid (comm with ) and spaces) state, then fields 4..; utime=250, stime=50.
        let text = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat(text), Some(Duration::from_secs(3)));
    }

    #[test]
    fn machine_cpu_excludes_idle_and_iowait() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(
            parse_proc_stat(text),
            Some((Duration::from_millis(1500), Duration::from_secs(10)))
        );
    }

    #[test]
    fn metrics_are_summed_by_name() {
        let text = "# HELP shardtally_rows_written_total x\n\
                    shardtally_rows_written_total{node_id=\"a\",shard_id=\"a\"} 10\n\
                    shardtally_rows_written_total{node_id=\"b\"} 5\n\
                    shardtally_database_up 1\n\
                    other_metric 3\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("shardtally_rows_written_total"), Some(&15.0));
        assert_eq!(m.get("shardtally_database_up"), Some(&1.0));
        assert_eq!(m.len(), 2);
        // Histogram buckets stay apart by bound (summed over workers).
        let text = "h_bucket{node_id=\"a\",le=\"0.05\"} 3\n\
                    h_bucket{node_id=\"b\",le=\"0.05\"} 1\n\
                    h_bucket{node_id=\"a\",le=\"+Inf\"} 7\n";
        let m = parse_metrics(&text.replace("h_", "shardtally_h_"));
        assert_eq!(m.get("shardtally_h_bucket{le=\"0.05\"}"), Some(&4.0));
        assert_eq!(m.get("shardtally_h_bucket{le=\"+Inf\"}"), Some(&7.0));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn this_process_is_measurable() {
        let m = memory(None).unwrap();
        assert!(m.rss > 0 && m.peak >= m.rss);
        assert!(cpu_time(None).is_some());
        assert!(machine_cpu().is_some());
    }
}
