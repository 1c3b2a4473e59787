//! The embedded default: one gzipped pprof per profile type per window in a folder.
//!
//! File name: `<app>.<type>.<start, unix ms>.<tags hash, 16 hex>.pb.gz`, with `/` in the app
//! name replaced by `~` (the name charset has no `~`), so a reader can select by app, type,
//! time and static tags from the name alone. The static tags are also inside each sample.

use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use super::{ExportError, Exporter, Upload};

pub(crate) struct FileExporter {
    pub dir: PathBuf,
}

impl FileExporter {
    pub fn file_name(upload: &Upload) -> String {
        let ms = upload.start.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        format!(
            "{}.{}.{}.{:016x}.pb.gz",
            upload.application_name.replace('/', "~"),
            upload.profile_name,
            ms,
            upload.tags_hash
        )
    }
}

impl Exporter for FileExporter {
    fn export(&self, upload: &Upload) -> Result<(), ExportError> {
        let path = self.dir.join(Self::file_name(upload));
        // Write to a temporary name and rename, so readers never see half a file.
        let tmp = self.dir.join(format!(".{}.tmp", Self::file_name(upload)));
        let io = |e: std::io::Error| ExportError {
            retryable: true,
            kind: crate::FailureKind::FileWrite,
            message: format!("writing {}: {e}", path.display()),
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        std::fs::write(&tmp, &upload.pprof).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}
