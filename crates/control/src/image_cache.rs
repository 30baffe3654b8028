//! The control plane's own image cache, for images it streams to hosts
//! that have no route out (`transfer = "stream"`): each image is
//! downloaded once into `<dir>/<digest>.img`, resumably (`.part` and an
//! HTTP range), verified before it is renamed into place, and shared by
//! every deployment of it (one download at a time per digest). Nothing
//! is ever read into memory whole. Each use sets an image's modification
//! time, and [`ImageCache::prune`] removes what was not used for a while.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use overvisor_hv::libvirt::deploy::FetchProgress;
use overvisor_model::operation::{DigestAlgorithm, ImageDigest};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

/// How long a download may go without a byte before it is given up (as
/// the hosts' curl `--speed-time`).
const SILENCE: Duration = Duration::from_secs(60);
/// How long connecting to the image's server may take.
const CONNECT: Duration = Duration::from_secs(20);
/// The largest checksum list read (a few KiB in practice).
const LIST_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageCacheError {
    #[error("cannot download {url}: {why}")]
    Download { url: String, why: String },
    #[error("no data from {0} for {SILENCE:?}")]
    Stalled(String),
    #[error(
        "checksum mismatch: the image's {algorithm} is {got}, the profile says {want}",
        algorithm = .algorithm.as_str()
    )]
    Mismatch {
        algorithm: DigestAlgorithm,
        got: String,
        want: String,
    },
    #[error("the control plane's image cache: {0}")]
    Io(#[from] std::io::Error),
}

/// How often the cache is looked through for images unused too long.
const PRUNE_EVERY: Duration = Duration::from_secs(6 * 3600);

impl crate::App {
    /// Removes the images unused for `image_cache_keep` now and every
    /// [`PRUNE_EVERY`] until `shutdown`; nothing when that is off.
    pub fn image_cache_start(&self, shutdown: &tokio_util::sync::CancellationToken) {
        let Some(keep) = self.config().image_cache_keep else {
            return;
        };
        let app = self.clone();
        crate::spawn_until(shutdown, async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            loop {
                every.tick().await;
                for file in app.images().prune(keep).await {
                    tracing::info!(
                        file = %file.display(),
                        unused_days = keep.as_secs() / 86_400,
                        "removed a cached image nobody used for that long"
                    );
                }
            }
        });
    }
}

/// One image cache per process.
pub struct ImageCache {
    dir: PathBuf,
    http: reqwest::Client,
    /// One lock per digest, so a second deployment waits for the first's
    /// download and finds it cached (a few bytes per image ever streamed).
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageCache {
    pub fn new(dir: PathBuf) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT)
            .build()
            .unwrap_or_default();
        Self {
            dir,
            http,
            locks: std::sync::Mutex::default(),
        }
    }

    /// The verified image with `digest` from `url`: its path and size,
    /// downloaded first unless cached (progress in bytes meanwhile).
    pub async fn image(
        &self,
        url: &str,
        digest: &ImageDigest,
        mut progress: impl FnMut(FetchProgress),
    ) -> Result<(PathBuf, u64), ImageCacheError> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(digest.hex.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        let image = self.dir.join(format!("{}.img", digest.hex));
        if let Ok(meta) = tokio::fs::metadata(&image).await {
            mark_used(&image).await?;
            return Ok((image, meta.len()));
        }
        tokio::fs::create_dir_all(&self.dir).await?;
        let part = self.dir.join(format!("{}.part", digest.hex));
        self.download(url, &part, &mut progress).await?;
        let got = file_digest(&part, digest.algorithm).await?;
        if got != digest.hex {
            tokio::fs::remove_file(&part).await?;
            return Err(ImageCacheError::Mismatch {
                algorithm: digest.algorithm,
                got,
                want: digest.hex.clone(),
            });
        }
        tokio::fs::rename(&part, &image).await?;
        let size = tokio::fs::metadata(&image).await?.len();
        Ok((image, size))
    }

    /// Removes the images (and partial downloads) not used for `keep`,
    /// except one a deployment holds right now; answers the files removed.
    /// What cannot be read or removed is left, and logged.
    pub async fn prune(&self, keep: Duration) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return removed; // Nothing was ever cached.
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            let Some(digest) = cache_file_digest(&path) else {
                continue;
            };
            // The lock a deployment takes to fetch or find it: one that
            // holds it is using it; one that comes later finds it gone.
            let lock = {
                let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
                locks.entry(digest.to_owned()).or_default().clone()
            };
            let Ok(_held) = lock.try_lock() else {
                continue;
            };
            match unused_for(&path).await {
                Ok(idle) if idle >= keep => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read an image cache entry");
                    continue;
                }
            }
            match tokio::fs::remove_file(&path).await {
                Ok(()) => removed.push(path),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove an unused image");
                }
            }
        }
        removed
    }

    /// Downloads `url` into `part`, resuming what it holds.
    async fn download(
        &self,
        url: &str,
        part: &Path,
        progress: &mut impl FnMut(FetchProgress),
    ) -> Result<(), ImageCacheError> {
        let failed = |why: String| ImageCacheError::Download {
            url: url.to_owned(),
            why,
        };
        let have = tokio::fs::metadata(part).await.map_or(0, |m| m.len());
        let mut req = self.http.get(url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = tokio::time::timeout(SILENCE, req.send())
            .await
            .map_err(|_| ImageCacheError::Stalled(url.to_owned()))?
            .map_err(|e| failed(e.to_string()))?;
        // All of it was there already (unverified when the process died).
        if have > 0 && resp.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(());
        }
        let resp_ok = resp.status().is_success();
        if !resp_ok {
            return Err(failed(format!("the server answered {}", resp.status())));
        }
        let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let from = if resumed { have } else { 0 };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .await?;
        progress(FetchProgress::Total(
            from + resp.content_length().unwrap_or(0),
        ));
        progress(FetchProgress::From(from));
        let mut got = from;
        loop {
            let chunk = tokio::time::timeout(SILENCE, resp.chunk())
                .await
                .map_err(|_| ImageCacheError::Stalled(url.to_owned()))?
                .map_err(|e| failed(e.to_string()))?;
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk).await?;
            got += chunk.len() as u64;
            progress(FetchProgress::Have(got));
        }
        file.flush().await?;
        file.sync_all().await?;
        Ok(())
    }

    /// A small text document (a checksum list), fetched by the control
    /// plane as the image will be.
    pub async fn text(&self, url: &str) -> Result<String, ImageCacheError> {
        let failed = |why: String| ImageCacheError::Download {
            url: url.to_owned(),
            why,
        };
        let mut resp = tokio::time::timeout(SILENCE, self.http.get(url).send())
            .await
            .map_err(|_| ImageCacheError::Stalled(url.to_owned()))?
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| failed(e.to_string()))?;
        let mut body = Vec::new();
        while let Some(chunk) = tokio::time::timeout(SILENCE, resp.chunk())
            .await
            .map_err(|_| ImageCacheError::Stalled(url.to_owned()))?
            .map_err(|e| failed(e.to_string()))?
        {
            if body.len() + chunk.len() > LIST_MAX {
                return Err(failed(format!("larger than {LIST_MAX} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| failed("not text".into()))
    }
}

/// The digest a cache file is named by (`<hex>.img` or `<hex>.part`);
/// `None` for anything else in the directory.
fn cache_file_digest(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let hex = name
        .strip_suffix(".img")
        .or_else(|| name.strip_suffix(".part"))?;
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// Records a use of the cached `image` as its modification time.
async fn mark_used(image: &Path) -> std::io::Result<()> {
    let image = image.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .write(true)
            .open(&image)?
            .set_modified(std::time::SystemTime::now())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// How long since `path` was last used (written or marked).
async fn unused_for(path: &Path) -> std::io::Result<Duration> {
    let modified = tokio::fs::metadata(path).await?.modified()?;
    Ok(modified.elapsed().unwrap_or_default())
}

/// The hex digest of a file, read in pieces off the async threads.
async fn file_digest(path: &Path, algorithm: DigestAlgorithm) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        Ok(match algorithm {
            DigestAlgorithm::Sha256 => hash_with(&mut file, sha2::Sha256::new())?,
            DigestAlgorithm::Sha512 => hash_with(&mut file, sha2::Sha512::new())?,
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

fn hash_with(file: &mut std::fs::File, mut hasher: impl Digest) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_digests_match_the_tools() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("written");
        assert_eq!(
            file_digest(&path, DigestAlgorithm::Sha256)
                .await
                .expect("read"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            file_digest(&path, DigestAlgorithm::Sha512)
                .await
                .expect("read")
                .starts_with("ddaf35a193617aba")
        );
    }

    fn aged(path: &Path, days: u64) {
        let then = std::time::SystemTime::now() - Duration::from_secs(days * 24 * 3600);
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("opened")
            .set_modified(then)
            .expect("set");
    }

    #[tokio::test]
    async fn images_unused_for_a_while_are_pruned_and_used_or_held_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::new(dir.path().to_owned());
        let digest = |c: &str| ImageDigest {
            algorithm: DigestAlgorithm::Sha256,
            hex: c.repeat(32),
        };
        let file = |name: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").expect("written");
            path
        };
        let old = file(format!("{}.img", "aa".repeat(32)));
        let old_part = file(format!("{}.part", "bb".repeat(32)));
        let recent = file(format!("{}.img", "cc".repeat(32)));
        let used = file(format!("{}.img", "dd".repeat(32)));
        let held = file(format!("{}.img", "ee".repeat(32)));
        let stranger = file("notes.txt".into());
        for path in [&old, &old_part, &used, &held, &stranger] {
            aged(path, 40);
        }
        aged(&recent, 3);
        // A deployment uses one: its age starts again.
        cache
            .image("http://127.0.0.1:9/x", &digest("dd"), |_| {})
            .await
            .expect("cached");
        // Another deployment is fetching one right now.
        let lock = {
            let mut locks = cache.locks.lock().expect("not poisoned");
            locks.entry("ee".repeat(32)).or_default().clone()
        };
        let holding = lock.lock().await;

        let mut removed = cache.prune(Duration::from_secs(30 * 24 * 3600)).await;
        removed.sort();
        let mut want = vec![old.clone(), old_part.clone()];
        want.sort();
        assert_eq!(removed, want);
        for kept in [&recent, &used, &held, &stranger] {
            assert!(kept.exists(), "{} kept", kept.display());
        }
        drop(holding);
        let removed = cache.prune(Duration::from_secs(30 * 24 * 3600)).await;
        assert_eq!(removed, vec![held], "no longer held");
        // A cache that was never made has nothing to prune.
        let none = ImageCache::new(dir.path().join("never"));
        assert!(none.prune(Duration::ZERO).await.is_empty());
    }

    #[tokio::test]
    async fn a_cached_image_is_not_downloaded_and_a_bad_url_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::new(dir.path().to_owned());
        let digest = ImageDigest {
            algorithm: DigestAlgorithm::Sha256,
            hex: "ab".repeat(32),
        };
        std::fs::write(dir.path().join(format!("{}.img", digest.hex)), b"xyz").expect("written");
        // No server at all: the cached file answers.
        let (path, size) = cache
            .image("http://127.0.0.1:9/x", &digest, |_| {})
            .await
            .expect("cached");
        assert_eq!((path.exists(), size), (true, 3));
        let other = ImageDigest {
            hex: "cd".repeat(32),
            ..digest
        };
        let err = cache
            .image("http://127.0.0.1:9/x", &other, |_| {})
            .await
            .expect_err("nothing listens");
        assert!(err.to_string().contains("cannot download"), "{err}");
    }
}
