//! `cargo tandem <command>`: build and run the tandem image under QEMU.
#![deny(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_qemu::cli::{self, BenchOptions, Command, RunOptions, UpArgs};
use tandem_qemu::sys;
use tandem_qemu::{
    Accel, ConsoleMode, Error, ImageExit, KernelCmdline, NetBackend, Node, PairLayout, PortForward,
    Result, TempDir, VmSpec, accel, bench, disk, image, node, nvme_load, pair, pairnet,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = cli::parse(&args).and_then(|command| match command {
        Command::Image => {
            let path = image::build_image()?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(options) => run(options),
        Command::BenchBoot(options) => bench_boot(options),
        Command::BenchNvme(args) => bench_nvme(&args),
        Command::Help => {
            println!("{}", cli::USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => up(args),
        Command::Down { dir } => {
            let dir = dir.unwrap_or_else(pair::default_dir);
            let report = pair::down(&dir)?;
            for (node, pid) in &report.stopped {
                eprintln!("tandem: stopped {node} (QEMU pid {pid})");
            }
            if report.network_removed {
                eprintln!("tandem: removed the network");
            }
            if report.stopped.is_empty() && !report.network_removed {
                eprintln!("tandem: nothing was running in {}", dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { dir } => {
            let dir = dir.unwrap_or_else(pair::default_dir);
            let states = pair::status(&dir);
            print!("{}", pair::render_status(&dir, &states));
            Ok(ExitCode::SUCCESS)
        }
        Command::Console { dir, node } => {
            pair::console(&dir.unwrap_or_else(pair::default_dir), node)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fault {
            dir,
            fault,
            node,
            nic,
        } => {
            let done = pair::fault(&dir.unwrap_or_else(pair::default_dir), fault, node, nic)?;
            eprintln!("tandem: {done}");
            Ok(ExitCode::SUCCESS)
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tandem: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(options: RunOptions) -> Result<ExitCode> {
    // Fail on the host's problems before spending time on a build.
    node::find_qemu()?;
    if let Some(path) = &options.disk {
        disk::check_disk(path)?;
    }
    let cmdline = KernelCmdline::parse(&options.append);
    let mut forwards = vec![
        PortForward {
            host: options.ports.nvme,
            guest: tandem_qemu::vm::GUEST_NVME_PORT,
        },
        PortForward {
            host: options.ports.discovery,
            guest: tandem_qemu::vm::GUEST_DISCOVERY_PORT,
        },
    ];
    if let Some(status) = cmdline.status_port() {
        forwards.push(PortForward {
            host: options.ports.status,
            guest: status,
        });
    }
    for forward in &forwards {
        node::check_port_free(forward.host)?;
    }

    let image = image::build_image()?;
    let (accel, why) = accel::resolve(options.accel, &image);
    eprintln!("tandem: accelerator: {why}");

    let dir = TempDir::new("run")?;
    let disk_path = match &options.disk {
        Some(path) => path.clone(),
        None => {
            let path = dir.path().join("disk0.img");
            disk::create_sparse(&path, options.disk_size)?;
            path
        }
    };
    let mut spec = VmSpec::new("node", dir.path(), &image, &cmdline.to_string(), accel)
        .disk(&disk_path)
        .nic(
            0,
            NetBackend::User {
                forwards: forwards.clone(),
                tftp: None,
            },
        );
    spec.memory_mib = options.memory_mib;
    spec.console = ConsoleMode::Stdio;

    describe(&spec, &forwards, options.disk.is_none(), accel);
    let mut node = Node::spawn(spec)?;
    let status = wait_forwarding_signals(&mut node)?;
    let qemu_log = std::fs::read_to_string(node.spec().qemu_log()).unwrap_or_default();
    let console_log = node.console_log();
    drop(node);
    let code = status.code();
    match ImageExit::from_code(code) {
        // QEMU also exits 0 on `quit` and on SIGTERM.
        ImageExit::PoweredOff if console_log.contains("tandem: powering off") => {
            eprintln!("tandem: powered off")
        }
        ImageExit::PoweredOff => eprintln!("tandem: QEMU exited (status 0)"),
        ImageExit::ConfigError => {
            eprintln!("tandem: the image rejected its command line (QEMU exit 3)")
        }
        ImageExit::Panic => eprintln!("tandem: the image panicked (QEMU exit 5)"),
        ImageExit::Other(_) => {
            eprintln!("tandem: QEMU exited ({status})");
            if !qemu_log.trim().is_empty() {
                eprintln!("{}", qemu_log.trim_end());
            }
        }
    }
    Ok(ExitCode::from(code.unwrap_or(1).clamp(0, 255) as u8))
}

/// Set by SIGINT, SIGTERM or SIGHUP while QEMU runs.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Waits for QEMU to exit. A SIGINT, SIGTERM or SIGHUP sent to the launcher
/// is passed on to QEMU as SIGTERM (QEMU then shuts down cleanly), so the
/// launcher is still there to clean up after it. (Ctrl-C in the terminal
/// reaches QEMU directly as well: it is in the same process group.)
fn wait_forwarding_signals(node: &mut Node) -> Result<std::process::ExitStatus> {
    sys::on_stop_signals(&STOP_REQUESTED);
    let mut forwarded = false;
    loop {
        if let Some(status) = node.try_exit()? {
            return Ok(status);
        }
        if STOP_REQUESTED.load(Ordering::SeqCst) && !forwarded {
            // Our live, unreaped child.
            sys::send_signal(node.pid(), sys::SIGTERM);
            forwarded = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn describe(spec: &VmSpec, forwards: &[PortForward], fresh_disk: bool, accel: Accel) {
    let disk = &spec.disks[0].path;
    if fresh_disk {
        eprintln!(
            "tandem: disk {} (fresh, sparse; removed on exit — keep data with --disk FILE)",
            disk.display()
        );
    } else {
        eprintln!("tandem: disk {}", disk.display());
    }
    for f in forwards {
        let service = match f.guest {
            tandem_qemu::vm::GUEST_NVME_PORT => "NVMe/TCP",
            tandem_qemu::vm::GUEST_DISCOVERY_PORT => "discovery",
            _ => "status",
        };
        eprintln!(
            "tandem: {service:<9} 127.0.0.1:{} -> guest port {}",
            f.host, f.guest
        );
    }
    eprintln!("tandem: QMP {}", spec.qmp_socket().display());
    eprintln!("tandem: console log {}", spec.console_log().display());
    eprintln!(
        "tandem: {accel}, {} MiB; console below (Ctrl-A x quits, Ctrl-A c: QEMU monitor)",
        spec.memory_mib
    );
}

fn up(args: UpArgs) -> Result<ExitCode> {
    node::find_qemu()?;
    let append = args.node_appends();
    let layout = PairLayout {
        front_end: args.front_end,
        replication: args.replication,
        nqn: args.nqn,
        ha_keys: args.ha_keys,
        host_path: None,
        pair_key: None,
    };
    layout.validate()?;
    let image = image::build_image()?;
    let (accel, why) = accel::resolve(args.accel, &image);
    eprintln!("tandem: accelerator: {why}");
    let options = pair::UpOptions {
        dir: args.dir.unwrap_or_else(pair::default_dir),
        layout,
        uplinks: pairnet::Uplinks {
            host_link: args.host_link,
            user_bridge: args.bridge,
        },
        accel,
        disk_size: args.disk_size,
        memory_mib: args.memory_mib,
        append,
        ready_timeout: std::time::Duration::from_secs(args.ready_timeout_secs),
    };
    sys::on_stop_signals(&pair::STOP_REQUESTED);
    let report = pair::up(&image, &options)?;
    let (out, err) = pair::render_up(&report);
    eprint!("{err}");
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn bench_nvme(args: &cli::NvmeBenchArgs) -> Result<ExitCode> {
    let results = nvme_load::run_all(args, &mut std::io::stderr())?;
    print!("{}", nvme_load::render_table(&results));
    if results.iter().all(nvme_load::JobResult::ok) {
        Ok(ExitCode::SUCCESS)
    } else {
        for r in results.iter().filter(|r| !r.ok()) {
            if let Some(e) = &r.first_error {
                eprintln!(
                    "tandem: {}: {} commands failed; the first: {e}",
                    r.spec_name, r.errors
                );
            }
            if let Some(e) = &r.first_verify_failure {
                eprintln!(
                    "tandem: {}: {} reads did not return what was written; the first: {e}",
                    r.spec_name, r.verify_failures
                );
            }
        }
        Ok(ExitCode::FAILURE)
    }
}

fn bench_boot(options: BenchOptions) -> Result<ExitCode> {
    node::find_qemu()?;
    let image = image::build_image()?;
    let figures = bench::measure(&image, options.runs)?;
    let section = bench::render(&figures, &bench::Machine::detect());
    print!("{section}");
    if options.write {
        let output = options
            .output
            .unwrap_or_else(|| image::workspace_root().join("docs").join("benchmarks.md"));
        let old = std::fs::read_to_string(&output).unwrap_or_default();
        let new = bench::replace_section(&old, bench::SECTION_HEADING, &section);
        std::fs::write(&output, new)
            .map_err(|e| Error::io(format!("writing {}", output.display()), e))?;
        eprintln!("tandem: wrote the Boot section of {}", output.display());
    }
    Ok(ExitCode::SUCCESS)
}
