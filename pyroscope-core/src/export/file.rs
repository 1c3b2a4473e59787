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
    /// `<app>.<profile>.<window start, ms>.<tags hash>.pb.gz`; `copy` > 0 (a window that began
    /// in the same millisecond as another of the same series: flushes in a row) adds
    /// `-<copy>` to the hash.
    pub fn file_name(upload: &Upload, copy: u32) -> String {
        let ms = upload.start.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let copy = if copy == 0 { String::new() } else { format!("-{copy}") };
        format!(
            "{}.{}.{}.{:016x}{copy}.pb.gz",
            upload.application_name.replace('/', "~"),
            upload.profile_name,
            ms,
            upload.tags_hash
        )
    }
}

impl Exporter for FileExporter {
    fn export(&self, upload: &Upload) -> Result<(), ExportError> {
        // A file of the same name is another window's: never overwritten (one thread exports).
        let name = (0..1000)
            .map(|copy| Self::file_name(upload, copy))
            .find(|name| !self.dir.join(name).exists())
            .unwrap_or_else(|| Self::file_name(upload, 1000));
        let path = self.dir.join(&name);
        // Write to a temporary name (this process's) and rename, so readers never see half a
        // file.
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn windows_begun_in_the_same_millisecond_get_files_of_their_own() {
        let dir = std::env::temp_dir().join(format!("pyroscope-file-exporter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let exporter = FileExporter { dir: dir.clone() };
        let start = UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        let upload = |pprof: &[u8]| Upload {
            profile_name: "process_cpu",
            pprof: pprof.to_vec(),
            start,
            end: start,
            tags: Arc::new(BTreeMap::new()),
            application_name: "app/x".into(),
            tags_hash: 0xab,
        };
        for body in [&b"first"[..], b"second", b"third"] {
            exporter.export(&upload(body)).unwrap();
        }
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        let name = |suffix: &str| format!("app~x.process_cpu.1796000000123.00000000000000ab{suffix}.pb.gz");
        let mut expected =
            vec![(name(""), b"first".to_vec()), (name("-1"), b"second".to_vec()), (name("-2"), b"third".to_vec())];
        expected.sort();
        assert_eq!(files, expected);
    }
}
