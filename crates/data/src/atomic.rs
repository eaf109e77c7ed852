//! Writing files so that readers see the old content or the new, never a partial one: a
//! temporary file in the same folder, synced, then renamed over the target.

use std::path::Path;

use anyhow::{Context, Result};

/// Permissions of a file this creates (the temporary file starts at 0600): what an existing
/// target has, else readable by all and writable by the owner, like files other tools write.
#[cfg(unix)]
fn permissions_for(path: &Path) -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::fs::Permissions::from_mode(0o644))
}

/// The name prefix of this process's temporary files: `.tmp-<pid>-`.
fn temporary_prefix(pid: u32) -> String {
    format!("{TEMPORARY}{pid}-")
}

const TEMPORARY: &str = ".tmp-";

/// Writes `bytes` to `path` atomically. The temporary file is named `.tmp-<pid>-…` in the
/// target's folder; what writers killed mid-write left there before is removed first
/// ([`remove_stale_temporaries`]), so no command leaves partial files behind for long.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    remove_stale_temporaries(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&temporary_prefix(std::process::id()))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    #[cfg(unix)]
    tmp.as_file().set_permissions(permissions_for(path))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Whether a process with this id is running (on other systems: assumed so, nothing removed).
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes the temporary files in `dir` that [`write_atomic`] calls of processes no longer
/// running left behind (killed mid-write); returns their paths. Those of running processes
/// are theirs, and stay.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(removed);
    };
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(TEMPORARY)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !alive(pid) && path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn new_files_are_readable_by_all_and_existing_modes_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        write_atomic(&path, b"1").unwrap();
        assert_eq!(mode(&path), 0o644);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"2").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"2");
    }

    /// A temporary file of a process that has exited goes; this process's own stays.
    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.path().join(format!("{}abc", temporary_prefix(dead)));
        let mine = dir
            .path()
            .join(format!("{}abc", temporary_prefix(std::process::id())));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(&mine, b"writing").unwrap();
        std::fs::write(dir.path().join("keep.txt"), b"x").unwrap();
        let removed = remove_stale_temporaries(dir.path()).unwrap();
        assert_eq!(removed, vec![stale.clone()]);
        assert!(!stale.exists() && mine.exists());
        std::fs::write(&stale, b"half").unwrap();
        write_atomic(&dir.path().join("out"), b"1").unwrap();
        assert!(!stale.exists(), "a write sweeps the folder first");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
