//! The output directory: written under a temporary name beside it, then
//! renamed into place whole, so that a reader never sees half an export.

use std::path::{Path, PathBuf};

use crate::Error;

#[derive(Debug)]
pub(crate) struct Staging {
    temp: PathBuf,
    out: PathBuf,
    /// Moved into place; otherwise dropping it removes the directory (an
    /// export stopped half way, by an error or its caller going away).
    placed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.placed {
            let _ = std::fs::remove_dir_all(&self.temp);
        }
    }
}

impl Staging {
    /// Checks `out` (new, or an empty directory) and makes the temporary
    /// directory beside it, readable by its owner only.
    pub(crate) fn create(out: &Path) -> Result<Self, Error> {
        let shown = out.display().to_string();
        match std::fs::metadata(out) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::Output {
                    path: shown,
                    reason: "exists and is not a directory".into(),
                });
            }
            Ok(_) => {
                let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
                if entries.next().is_some() {
                    return Err(Error::NotEmpty(shown));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(out, e)),
        }
        let name = out
            .file_name()
            .ok_or_else(|| Error::Output {
                path: shown.clone(),
                reason: "names no directory".into(),
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| Error::Write(e.to_string()))?;
        let temp = parent.join(format!(".{name}.partial-{}", hex::encode(random)));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&temp).map_err(|e| Error::io(&parent, e))?;
        Ok(Self {
            temp,
            out: out.to_owned(),
            placed: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.temp
    }

    /// Moves the finished export into place.
    pub(crate) fn commit(mut self) -> Result<(), Error> {
        let result = (|| {
            if self.out.exists() {
                // Checked empty at the start; still empty, or this fails.
                std::fs::remove_dir(&self.out).map_err(|e| match e.kind() {
                    std::io::ErrorKind::DirectoryNotEmpty => {
                        Error::NotEmpty(self.out.display().to_string())
                    }
                    _ => Error::io(&self.out, e),
                })?;
            }
            std::fs::rename(&self.temp, &self.out).map_err(|e| Error::io(&self.out, e))?;
            // The rename itself survives a crash once the parent is synced.
            if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty())
                && let Ok(dir) = std::fs::File::open(parent)
            {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        // Removed by `drop` unless it was moved into place.
        self.placed = result.is_ok();
        result
    }
}
