//! The pair key (`pair_key=`): made once per setup directory by `up`, kept
//! in `DIR/pair.key` readable only by its owner, passed to the three
//! members on their command lines, and never printed.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The file in a setup directory that holds its key.
pub const FILE: &str = "pair.key";

/// 32 bytes from the kernel's random number generator, as 64 lowercase
/// hexadecimal digits (the form `pair_key=` takes).
pub fn generate() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading /dev/urandom for a pair key", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn is_key(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The key of the setup in `dir`: read from `DIR/pair.key`, or made and
/// written there (mode 0600) if the file does not exist yet.
pub fn load_or_create(dir: &Path) -> Result<String> {
    let path: PathBuf = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim();
            if !is_key(key) {
                return Err(Error::Setup(format!(
                    "{} does not hold a pair key (64 hexadecimal digits); \
                     remove it to have a new one made (all three members must then restart)",
                    path.display()
                )));
            }
            // Keep it private even if someone loosened it.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            Ok(key.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate()?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            file.write_all(format!("{key}\n").as_bytes())
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            Ok(key)
        }
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_per_directory_and_kept_private() {
        let dir = crate::TempDir::new("pairkey").unwrap();
        let key = load_or_create(dir.path()).unwrap();
        assert!(is_key(&key), "{key}");
        assert_eq!(load_or_create(dir.path()).unwrap(), key);
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(generate().unwrap(), key);
        std::fs::write(dir.path().join(FILE), "not a key\n").unwrap();
        let error = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(error.contains("does not hold a pair key"), "{error}");
    }
}
