//! The `tandem` binary end to end: its errors, and a `run` whose image
//! rejects its command line (the quickest complete boot-and-exit).

use std::process::{Command, Output, Stdio};

fn tandem(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
    command.args(args).stdin(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("running tandem")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn missing_qemu_says_how_to_install_it() {
    let out = tandem(
        &["run"],
        &[("TANDEM_QEMU", "/nonexistent/qemu-system-x86_64")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("apt-get install -y --no-install-recommends qemu-system-x86"),
        "{stderr}"
    );
}

#[test]
fn unreadable_disk_is_named() {
    let out = tandem(&["run", "--disk", "/nonexistent/disk.img"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot open disk file /nonexistent/disk.img"),
        "{stderr}"
    );
}

#[test]
fn taken_port_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let status_port = listener.local_addr().unwrap().port();
    // --port-base N forwards N, N+1 and N+2 (status).
    let base = (status_port - 2).to_string();
    let out = tandem(&["run", "--port-base", &base], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{status_port} is already in use")),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["run", "--accel", "hvf"][..],
        &["frobnicate"],
        &["run", "--mem", "0"],
    ] {
        let out = tandem(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).starts_with("tandem: error: "), "{args:?}");
    }
    let help = tandem(&["help"], &[]);
    assert!(help.status.success() && text(&help.stdout).contains("cargo tandem <command>"));
}

#[test]
fn run_passes_the_command_line_and_the_image_exit_status_through() {
    let base = tandem_qemu::free_port()
        .unwrap()
        .saturating_sub(2)
        .max(1024)
        .to_string();
    let out = tandem(
        &[
            "run",
            "--accel",
            "tcg",
            "--port-base",
            &base,
            "--disk-size",
            "1M",
            "--append",
            "log=loud",
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("tandem: config error: log: "), "{stdout}");
    assert!(stderr.contains("accelerator: TCG"), "{stderr}");
    assert!(stderr.contains("rejected its command line"), "{stderr}");
}

#[test]
fn image_prints_its_path_last() {
    let out = tandem(&["image"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let path = std::path::PathBuf::from(stdout.lines().last().unwrap());
    assert!(path.is_absolute() && path.is_file(), "{stdout}");
    assert!(path.ends_with("target/image/x86_64-unknown-linux-gnu/release/tandem-image"));
}
