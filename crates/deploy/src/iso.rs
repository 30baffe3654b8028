//! ISO 9660 images for seed media, written in memory by the control plane
//! (hosts need no mkisofs). Joliet and Rock Ridge are both written: Linux
//! reads `user-data` through Rock Ridge and Windows reads `Autounattend.xml`
//! through Joliet; plain ISO 9660 would mangle both names to 8.3 upper case.

use std::io::Cursor;
use std::sync::Arc;

use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{CreationFeatures, FormatOptions};
use hadris_iso::write::{File, InputFiles, IsoImageWriter, estimator};

use crate::GenerateError;

/// An ISO image with `files` (name, contents) in its root directory.
/// `volume_id` is what guests look for (`CIDATA` for cloud-init NoCloud):
/// ISO 9660 d-characters, at most 32.
pub fn build(volume_id: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>, GenerateError> {
    if volume_id.is_empty()
        || volume_id.len() > 32
        || !volume_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(GenerateError::Iso(format!(
            "volume id {volume_id:?} is not 1 to 32 of A-Z, 0-9 and _"
        )));
    }
    let input = InputFiles {
        path_separator: PathSeparator::ForwardSlash,
        files: files
            .iter()
            .map(|(name, contents)| File::File {
                name: Arc::new((*name).to_owned()),
                contents: contents.to_vec(),
            })
            .collect(),
    };
    let options = FormatOptions {
        volume_name: volume_id.to_owned(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("OVERVISOR".to_owned()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures::with_extensions(),
        strict_charset: true,
    };
    // The writer reads back what it wrote, so it needs a zeroed buffer of
    // the final size up front; the estimate is an upper bound, and the
    // margin is cheap at seed sizes.
    let size = estimator::estimate(&input, &options).minimum_bytes() + MARGIN;
    let size = usize::try_from(size).map_err(|e| GenerateError::Iso(e.to_string()))?;
    let mut image = Cursor::new(vec![0u8; size]);
    IsoImageWriter::format_new(&mut image, input, options)
        .map_err(|e| GenerateError::Iso(e.to_string()))?;
    let mut image = image.into_inner();
    image.truncate(volume_bytes(&image)?);
    Ok(image)
}

const SECTOR: usize = 2048;
const MARGIN: u64 = 1024 * 1024;

/// The image's size as its primary volume descriptor (sector 16) records
/// it: the volume space size, a little-endian u32 at byte 80, in sectors.
fn volume_bytes(image: &[u8]) -> Result<usize, GenerateError> {
    let at = 16 * SECTOR + 80;
    let sectors = image
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| GenerateError::Iso("no primary volume descriptor".into()))?;
    let bytes = usize::try_from(sectors)
        .unwrap_or(usize::MAX)
        .saturating_mul(SECTOR);
    if bytes == 0 || bytes > image.len() {
        return Err(GenerateError::Iso(format!(
            "volume size {bytes} does not fit the {} bytes written",
            image.len()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests;
