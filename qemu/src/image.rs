//! Building the tandem image.
//!
//! The image is a freestanding static ELF for the host target. Its rustflags
//! must not reach host-side crates (this launcher, the tests, build scripts),
//! so they are passed here with `--config` for the image build alone, into a
//! target directory of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The host target the image is built for (no custom target JSON, no build-std).
pub const IMAGE_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Code-generation flags of the image: it runs at its link address with
/// identity-mapped memory and a baseline x86-64 CPU.
pub const IMAGE_RUSTFLAGS: &[&str] = &[
    "-C",
    "relocation-model=static",
    "-C",
    "code-model=small",
    "-C",
    "target-cpu=x86-64",
    "-C",
    "force-frame-pointers=yes",
];

/// The workspace root (the directory holding the root Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Where the image build puts its artifacts.
pub fn image_target_dir(root: &Path) -> PathBuf {
    root.join("target").join("image")
}

/// Path of the built image under `root`.
pub fn image_path(root: &Path) -> PathBuf {
    image_target_dir(root)
        .join(IMAGE_TARGET)
        .join("release")
        .join("tandem-image")
}

/// The `--config` value that sets the image's rustflags for its target only.
pub fn rustflags_config() -> String {
    let quoted: Vec<String> = IMAGE_RUSTFLAGS
        .iter()
        .map(|flag| format!("\"{flag}\""))
        .collect();
    format!("target.{IMAGE_TARGET}.rustflags=[{}]", quoted.join(","))
}

/// Arguments of the `cargo` invocation that builds the image from `root`.
pub fn build_args(root: &Path) -> Vec<String> {
    vec![
        "build".into(),
        "--release".into(),
        "-p".into(),
        "tandem-kernel".into(),
        "--bin".into(),
        "tandem-image".into(),
        "--target".into(),
        IMAGE_TARGET.into(),
        "--target-dir".into(),
        image_target_dir(root).display().to_string(),
        "--config".into(),
        rustflags_config(),
    ]
}

/// Builds the image with cargo and returns its absolute path.
///
/// Cargo's output goes to this process's stderr. Safe to call from a test
/// running under `cargo test`: the nested build uses its own target dir.
pub fn build_image() -> Result<PathBuf> {
    build_image_in(&workspace_root())
}

/// [`build_image`] for the workspace at `root`.
pub fn build_image_in(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(build_args(root))
        .current_dir(root)
        // These would override the image's rustflags (they take precedence
        // over `target.<triple>.rustflags`).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(|source| Error::io(format!("running {}", Path::new(&cargo).display()), source))?;
    if !status.success() {
        return Err(Error::ImageBuild { status });
    }
    let path = image_path(root);
    if !path.is_file() {
        return Err(Error::io(
            format!("the build succeeded but {} is missing", path.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustflags_are_scoped_to_the_image_target() {
        assert_eq!(
            rustflags_config(),
            "target.x86_64-unknown-linux-gnu.rustflags=[\"-C\",\"relocation-model=static\",\
             \"-C\",\"code-model=small\",\"-C\",\"target-cpu=x86-64\",\"-C\",\"force-frame-pointers=yes\"]"
        );
    }

    #[test]
    fn build_uses_its_own_target_dir_and_explicit_target() {
        let root = Path::new("/w");
        let args = build_args(root);
        let pos = args.iter().position(|a| a == "--target-dir").unwrap();
        assert_eq!(args[pos + 1], "/w/target/image");
        let pos = args.iter().position(|a| a == "--target").unwrap();
        assert_eq!(args[pos + 1], IMAGE_TARGET);
        assert!(args.contains(&"--release".to_string()));
        assert_eq!(
            image_path(root),
            Path::new("/w/target/image/x86_64-unknown-linux-gnu/release/tandem-image")
        );
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
