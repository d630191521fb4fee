//! ackcheck: the acknowledged-write checker run by the Linux host in the HA
//! tests, beyond fio's own verify.
//!
//! It owns `BLOCKS` 4 KiB blocks of a block device starting at `OFFSET` and
//! writes them one at a time (O_DIRECT, queue depth 1), each write
//! carrying (block, version) and a pattern derived from both. A write the
//! kernel completed without error is *acknowledged*: its version is the
//! least the block may hold from then on. A write that failed may or may not
//! have reached the disk, so the block may hold any version between the last
//! acknowledged one and the last attempted one. Between writes it reads a
//! block back and reports a version older than acknowledged (a stale read).
//!
//! Every completion is logged with the wall-clock time in milliseconds, so
//! the host can measure I/O stalls around the faults it injects.
//!
//! ```text
//! ackcheck run DEV OFFSET BLOCKS LOG STOPFILE STATE [OPS_PER_S]
//! ackcheck verify DEV OFFSET BLOCKS STATE
//! ackcheck now
//! ```
//!
//! `run` writes until STOPFILE exists, then reads every block back, saves
//! its bookkeeping to STATE and prints one report line; `verify` reads every
//! block back against STATE (e.g. after a switchover, on the other node);
//! `now` prints the clock the log uses (ms since the epoch).
//! Report: `ackcheck: <mode> blocks=.. writes=.. acked=.. write_errors=..
//! reads=.. read_errors=.. stale=.. lost=.. corrupt=.. unreadable=..`;
//! exit status 0 only if stale, lost, corrupt and unreadable are all 0.
//!
//! Built by the test on the host as a static binary (std only):
//! `rustc -O -C target-feature=+crt-static ackcheck.rs`.

use std::alloc::{Layout, alloc_zeroed};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BLOCK: usize = 4096;
const MAGIC: u64 = 0x5444_4d41_434b_434b; // "TDMACKCK"
const O_DIRECT: i32 = 0o40000;

/// A 4 KiB-aligned buffer (O_DIRECT needs aligned memory).
struct Buffer(&'static mut [u8]);

impl Buffer {
    fn new() -> Buffer {
        let layout = Layout::from_size_align(BLOCK, BLOCK).expect("layout");
        // SAFETY: non-zero size; the allocation lives for the whole process.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        // SAFETY: `ptr` points at BLOCK zeroed bytes owned by nobody else.
        Buffer(unsafe { std::slice::from_raw_parts_mut(ptr, BLOCK) })
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// xorshift64: the pattern of (block, version), and the block choice.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn fill(buf: &mut [u8], block: u64, version: u64) {
    buf[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    buf[8..16].copy_from_slice(&block.to_le_bytes());
    buf[16..24].copy_from_slice(&version.to_le_bytes());
    let mut s = (block << 32) ^ version ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in buf[24..].chunks_mut(8) {
        let v = next(&mut s).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// What a block holds: `Some(version)` for an intact block of ours (0 for a
/// never-written, all-zero block), `None` for anything else.
fn decode(buf: &[u8], block: u64, scratch: &mut [u8]) -> Option<u64> {
    if buf.iter().all(|b| *b == 0) {
        return Some(0);
    }
    let magic = u64::from_le_bytes(buf[0..8].try_into().ok()?);
    let owner = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let version = u64::from_le_bytes(buf[16..24].try_into().ok()?);
    if magic != MAGIC || owner != block || version == 0 {
        return None;
    }
    fill(scratch, block, version);
    (scratch == buf).then_some(version)
}

/// Per block: the last acknowledged version and the last attempted one.
#[derive(Clone, Copy, Default)]
struct Track {
    acked: u64,
    attempted: u64,
}

struct Counts {
    writes: u64,
    acked: u64,
    write_errors: u64,
    reads: u64,
    read_errors: u64,
    stale: u64,
    lost: u64,
    corrupt: u64,
    unreadable: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: ackcheck run DEV OFFSET BLOCKS LOG STOPFILE STATE [OPS_PER_S]\n       ackcheck verify DEV OFFSET BLOCKS STATE"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

fn open(dev: &str) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        // No O_DSYNC: "acknowledged" is the NVMe write completion the host
        // saw; the faults are node failures, not a power cut of the disks.
        .custom_flags(O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| {
            eprintln!("ackcheck: opening {dev}: {e}");
            std::process::exit(2)
        })
}

/// Reads every block back; counts lost, corrupt and unreadable blocks.
fn read_back(
    file: &File,
    offset: u64,
    tracks: &[Track],
    counts: &mut Counts,
    log: &mut dyn Write,
) {
    let buf = Buffer::new();
    let mut scratch = vec![0u8; BLOCK];
    for (block, track) in tracks.iter().enumerate() {
        let block = block as u64;
        // A path may be between owners for a moment: retry a failed read.
        let mut ok = false;
        for _ in 0..50 {
            if file.read_exact_at(buf.0, offset + block * BLOCK as u64).is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !ok {
            counts.unreadable += 1;
            let _ = writeln!(log, "UNREADABLE {block}");
            continue;
        }
        match decode(buf.0, block, &mut scratch) {
            Some(v) if v >= track.acked && v <= track.attempted => {}
            Some(v) if v < track.acked => {
                counts.lost += 1;
                let _ = writeln!(log, "LOST {block} found={v} acked={}", track.acked);
            }
            Some(v) => {
                counts.corrupt += 1;
                let _ = writeln!(log, "CORRUPT {block} found={v} attempted={}", track.attempted);
            }
            None => {
                counts.corrupt += 1;
                let _ = writeln!(log, "CORRUPT {block} not a block of ours");
            }
        }
    }
}

fn report(mode: &str, blocks: usize, c: &Counts) -> bool {
    println!(
        "ackcheck: {mode} blocks={blocks} writes={} acked={} write_errors={} reads={} read_errors={} stale={} lost={} corrupt={} unreadable={}",
        c.writes,
        c.acked,
        c.write_errors,
        c.reads,
        c.read_errors,
        c.stale,
        c.lost,
        c.corrupt,
        c.unreadable
    );
    c.stale == 0 && c.lost == 0 && c.corrupt == 0 && c.unreadable == 0
}

fn save_state(path: &str, tracks: &[Track]) {
    let mut text = String::new();
    for t in tracks {
        text.push_str(&format!("{} {}\n", t.acked, t.attempted));
    }
    std::fs::write(path, text).unwrap_or_else(|e| {
        eprintln!("ackcheck: writing {path}: {e}");
        std::process::exit(2)
    });
}

fn load_state(path: &str, blocks: usize) -> Vec<Track> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("ackcheck: reading {path}: {e}");
        std::process::exit(2)
    });
    let tracks: Vec<Track> = text
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace().map(|x| x.parse().unwrap_or(0));
            Track {
                acked: w.next().unwrap_or(0),
                attempted: w.next().unwrap_or(0),
            }
        })
        .collect();
    if tracks.len() != blocks {
        eprintln!("ackcheck: {path} has {} blocks, not {blocks}", tracks.len());
        std::process::exit(2)
    }
    tracks
}

fn counts() -> Counts {
    Counts {
        writes: 0,
        acked: 0,
        write_errors: 0,
        reads: 0,
        read_errors: 0,
        stale: 0,
        lost: 0,
        corrupt: 0,
        unreadable: 0,
    }
}

fn run(args: &[String]) -> bool {
    let dev: String = arg(args, 2);
    let offset: u64 = arg(args, 3);
    let blocks: usize = arg(args, 4);
    let log_path: String = arg(args, 5);
    let stop: String = arg(args, 6);
    let state: String = arg(args, 7);
    let rate: u64 = args.get(8).map(|_| arg(args, 8)).unwrap_or(200);
    if blocks == 0 || rate == 0 {
        usage();
    }
    let file = open(&dev);
    let mut log = BufWriter::new(File::create(&log_path).unwrap_or_else(|e| {
        eprintln!("ackcheck: creating {log_path}: {e}");
        std::process::exit(2)
    }));
    let mut tracks = vec![Track::default(); blocks];
    let mut c = counts();
    let wbuf = Buffer::new();
    let rbuf = Buffer::new();
    let mut scratch = vec![0u8; BLOCK];
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ now_ms() as u64;
    let period = Duration::from_micros(1_000_000 / rate);
    let mut last_stop_check = Instant::now();
    let mut last_flush = Instant::now();
    loop {
        let started = Instant::now();
        if last_stop_check.elapsed() >= Duration::from_millis(200) {
            last_stop_check = Instant::now();
            if Path::new(&stop).exists() {
                break;
            }
        }
        // Write the next version of a random block.
        let block = next(&mut rng) % blocks as u64;
        let track = &mut tracks[block as usize];
        let version = track.attempted + 1;
        track.attempted = version;
        fill(wbuf.0, block, version);
        c.writes += 1;
        match file.write_all_at(wbuf.0, offset + block * BLOCK as u64) {
            Ok(()) => {
                track.acked = version;
                c.acked += 1;
                let _ = writeln!(log, "W {} {block} {version}", now_ms());
            }
            Err(e) => {
                c.write_errors += 1;
                let _ = writeln!(log, "WERR {} {block} {version} {e}", now_ms());
            }
        }
        // Read back a block written before: never older than acknowledged.
        let block = next(&mut rng) % blocks as u64;
        let track = tracks[block as usize];
        if track.attempted > 0 {
            c.reads += 1;
            match file.read_exact_at(rbuf.0, offset + block * BLOCK as u64) {
                Ok(()) => {
                    let t = now_ms();
                    match decode(rbuf.0, block, &mut scratch) {
                        Some(v) if v >= track.acked && v <= track.attempted => {
                            let _ = writeln!(log, "R {t} {block} {v}");
                        }
                        Some(v) if v < track.acked => {
                            c.stale += 1;
                            let _ = writeln!(log, "STALE {t} {block} found={v} acked={}", track.acked);
                        }
                        _ => {
                            c.corrupt += 1;
                            let _ = writeln!(log, "CORRUPT {t} {block} attempted={}", track.attempted);
                        }
                    }
                }
                Err(e) => {
                    c.read_errors += 1;
                    let _ = writeln!(log, "RERR {} {block} {e}", now_ms());
                }
            }
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            last_flush = Instant::now();
            let _ = log.flush();
        }
        if let Some(rest) = period.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let _ = writeln!(log, "STOP {}", now_ms());
    read_back(&file, offset, &tracks, &mut c, &mut log);
    let _ = log.flush();
    save_state(&state, &tracks);
    report("run", blocks, &c)
}

fn verify(args: &[String]) -> bool {
    let dev: String = arg(args, 2);
    let offset: u64 = arg(args, 3);
    let blocks: usize = arg(args, 4);
    let state: String = arg(args, 5);
    let file = open(&dev);
    let tracks = load_state(&state, blocks);
    let mut c = counts();
    let mut out = std::io::stdout();
    read_back(&file, offset, &tracks, &mut c, &mut out);
    report("verify", blocks, &c)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ok = match args.get(1).map(String::as_str) {
        Some("run") => run(&args),
        Some("verify") => verify(&args),
        Some("now") => {
            println!("{}", now_ms());
            true
        }
        _ => usage(),
    };
    std::process::exit(if ok { 0 } else { 1 })
}
