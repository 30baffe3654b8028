//! Hyper-V KVP (key-value pair exchange) as a message channel: the layout
//! of the pool files the Linux KVP daemon keeps (`/var/lib/hyperv/
//! .kvp_pool_N`: records of a 512-byte key and a 2048-byte value, each NUL
//! padded) and how one protocol line is cut into items that fit a value.
//!
//! A message `prefix` (e.g. `overvisor.hello`) is stored as items
//! `prefix.0` … `prefix.{n-1}` of at most [`CHUNK_BYTES`] each, then
//! `prefix.n` = `"<n> <bytes>"`, written last: a reader that sees the count
//! and all chunks of the stated length has the whole message. Pure
//! functions; the agent and the hosts do the reading and writing.

/// Bytes of a record's key field.
pub const KEY_BYTES: usize = 512;
/// Bytes of a record's value field.
pub const VALUE_BYTES: usize = 2048;
pub const RECORD_BYTES: usize = KEY_BYTES + VALUE_BYTES;
/// A chunk's text: within a value with its NUL, and within the 2048 bytes
/// Hyper-V carries when a value travels as UTF-16.
pub const CHUNK_BYTES: usize = 1000;

/// The guest's pool the host writes into (read by the guest).
pub const POOL_HOST_TO_GUEST: &str = "/var/lib/hyperv/.kvp_pool_0";
/// The guest's pool it writes for the host to read.
pub const POOL_GUEST_TO_HOST: &str = "/var/lib/hyperv/.kvp_pool_1";

/// Message names on KVP.
pub const HELLO: &str = "overvisor.hello";
pub const SEALED: &str = "overvisor.sealed";
pub const STATUS: &str = "overvisor.status";
/// The guest's identity, where no seed media carries it (Hyper-V).
pub const IDENTITY: &str = "overvisor.identity";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvpError {
    #[error("a KVP key is at most {max} bytes, {0} given", max = KEY_BYTES - 1)]
    KeyTooLong(usize),
    #[error("a KVP value is at most {max} bytes, {0} given", max = VALUE_BYTES - 1)]
    ValueTooLong(usize),
    #[error("a KVP key or value cannot hold a NUL byte")]
    Nul,
}

/// The records of a pool file, in order; a partial record at the end (a
/// writer caught mid-write) is left out.
pub fn records_decode(pool: &[u8]) -> Vec<(String, String)> {
    pool.chunks_exact(RECORD_BYTES)
        .map(|r| {
            let (k, v) = r.split_at(KEY_BYTES);
            (field(k), field(v))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// One record, NUL padded.
pub fn record_encode(key: &str, value: &str) -> Result<Vec<u8>, KvpError> {
    if key.contains('\0') || value.contains('\0') {
        return Err(KvpError::Nul);
    }
    if key.len() >= KEY_BYTES {
        return Err(KvpError::KeyTooLong(key.len()));
    }
    if value.len() >= VALUE_BYTES {
        return Err(KvpError::ValueTooLong(value.len()));
    }
    let mut r = vec![0u8; RECORD_BYTES];
    r[..key.len()].copy_from_slice(key.as_bytes());
    r[KEY_BYTES..KEY_BYTES + value.len()].copy_from_slice(value.as_bytes());
    Ok(r)
}

/// `pool` with each item set (replacing a record of the same key in
/// place, else appended) and every record whose key starts with
/// `drop_prefix` and is not set here removed.
pub fn pool_write(
    pool: &[u8],
    items: &[(String, String)],
    drop_prefix: Option<&str>,
) -> Result<Vec<u8>, KvpError> {
    let mut records = records_decode(pool);
    records.retain(|(k, _)| {
        items.iter().any(|(key, _)| key == k) || !drop_prefix.is_some_and(|p| k.starts_with(p))
    });
    for (key, value) in items {
        match records.iter_mut().find(|(k, _)| k == key) {
            Some(r) => r.1.clone_from(value),
            None => records.push((key.clone(), value.clone())),
        }
    }
    let mut out = Vec::with_capacity(records.len() * RECORD_BYTES);
    for (k, v) in &records {
        out.extend(record_encode(k, v)?);
    }
    Ok(out)
}

/// `message` as the items of `prefix`, the count last.
pub fn chunk(prefix: &str, message: &str) -> Vec<(String, String)> {
    let mut items = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let mut cut = rest.len().min(CHUNK_BYTES);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        items.push((format!("{prefix}.{}", items.len()), head.to_owned()));
        rest = tail;
    }
    let count = format!("{} {}", items.len(), message.len());
    items.push((format!("{prefix}.n"), count));
    items
}

/// The whole message of `prefix` among `items`, once it is all there.
pub fn unchunk(prefix: &str, items: &[(String, String)]) -> Option<String> {
    let get = |key: String| items.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v);
    let (n, len) = get(format!("{prefix}.n"))?.split_once(' ')?;
    let (n, len): (usize, usize) = (n.parse().ok()?, len.parse().ok()?);
    if len > crate::wire::MAX_LINE_BYTES {
        return None;
    }
    let mut message = String::with_capacity(len);
    for i in 0..n {
        message.push_str(get(format!("{prefix}.{i}"))?);
    }
    (message.len() == len).then_some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_the_daemons_layout() {
        let r = record_encode("k", "vé").expect("record");
        assert_eq!(r.len(), 2560);
        assert_eq!(&r[..2], b"k\0");
        assert_eq!(&r[512..515], "vé".as_bytes());
        assert!(r[515..].iter().all(|b| *b == 0));
        let mut pool = r.clone();
        pool.extend(record_encode("other", "x").expect("record"));
        pool.extend_from_slice(&r[..100]);
        assert_eq!(
            records_decode(&pool),
            vec![("k".into(), "vé".into()), ("other".into(), "x".into())]
        );
        assert_eq!(
            record_encode(&"k".repeat(512), ""),
            Err(KvpError::KeyTooLong(512))
        );
        assert_eq!(
            record_encode("k", &"v".repeat(2048)),
            Err(KvpError::ValueTooLong(2048))
        );
        assert!(record_encode("k", "a\0b").is_err());
    }

    #[test]
    fn a_long_message_travels_in_chunks() {
        let message = format!("{}é{}\n", "a".repeat(999), "b".repeat(2500));
        let items = chunk(SEALED, &message);
        assert_eq!(items.len(), 5);
        assert!(items.iter().all(|(_, v)| v.len() <= CHUNK_BYTES));
        assert_eq!(
            items.last().map(|(k, _)| k.as_str()),
            Some("overvisor.sealed.n")
        );
        let pool = pool_write(&[], &items, None).expect("pool");
        assert_eq!(pool.len(), 5 * RECORD_BYTES);
        let read = records_decode(&pool);
        assert_eq!(unchunk(SEALED, &read).as_deref(), Some(message.as_str()));
        // Without the count, or with a chunk missing, nothing yet.
        assert_eq!(unchunk(SEALED, &read[..4]), None);
        let mut holed = read.clone();
        holed.remove(1);
        assert_eq!(unchunk(SEALED, &holed), None);
    }

    #[test]
    fn rewriting_a_message_replaces_its_old_chunks() {
        let other = vec![("unrelated".to_owned(), "stays".to_owned())];
        let pool = pool_write(&[], &other, None).expect("pool");
        let pool = pool_write(&pool, &chunk(HELLO, &"x".repeat(2500)), Some(HELLO)).expect("pool");
        let pool = pool_write(&pool, &chunk(HELLO, "short"), Some(HELLO)).expect("pool");
        let read = records_decode(&pool);
        assert_eq!(read.len(), 3, "{read:?}");
        assert_eq!(unchunk(HELLO, &read).as_deref(), Some("short"));
        assert!(read.contains(&("unrelated".into(), "stays".into())));
    }
}
