//! The one way this crate writes XML: serde structs through quick-xml, which
//! escapes every text and attribute value, indented so generated documents
//! read well in logs and golden files. Also the small element shapes the
//! domain and Autounattend documents share.

use serde::Serialize;

use crate::GenerateError;

/// `value` as an indented XML document whose root element is named by the
/// type's `#[serde(rename)]`.
pub(crate) fn to_document(
    value: &impl Serialize,
    declaration: bool,
) -> Result<String, GenerateError> {
    let mut out = String::new();
    if declaration {
        out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    }
    let mut ser = quick_xml::se::Serializer::new(&mut out);
    ser.indent(' ', 2);
    value
        .serialize(ser)
        .map_err(|e| GenerateError::Xml(e.to_string()))?;
    out.push('\n');
    Ok(out)
}

/// An element with only text: `<name>text</name>`.
#[derive(Serialize, Clone)]
pub(crate) struct Text<T: Serialize> {
    #[serde(rename = "$text")]
    pub text: T,
}

/// An empty element: `<acpi/>`.
#[derive(Serialize)]
pub(crate) struct Empty {}

#[cfg(test)]
pub(crate) mod tests {
    use quick_xml::events::Event;

    /// Checks `xml` is well-formed, namespaces included, with libxml2's
    /// `xmllint` (package libxml2-utils, scripts/install-deps), and reads it
    /// with quick-xml, returning the element names in document order.
    pub(crate) fn well_formed(xml: &str) -> Vec<String> {
        let mut child = std::process::Command::new("xmllint")
            .args(["--noout", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("xmllint runs (package libxml2-utils)");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), xml.as_bytes())
            .expect("write to xmllint");
        let status = child.wait().expect("xmllint finishes");
        assert!(status.success(), "xmllint refuses:\n{xml}");

        let mut reader = quick_xml::Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let mut names = Vec::new();
        loop {
            match reader.read_event() {
                Ok(Event::Eof) => return names,
                Ok(Event::Start(e) | Event::Empty(e)) => {
                    for attr in e.attributes() {
                        attr.expect("well-formed attribute");
                    }
                    names.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                Ok(Event::Text(t)) => {
                    t.decode().expect("text decodes");
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "not well-formed at {}: {e}\n{xml}",
                    reader.buffer_position()
                ),
            }
        }
    }

    /// Compares `actual` with the golden file `tests/golden/<name>`;
    /// `BLESS=1` rewrites the file instead (review the diff before
    /// committing).
    pub(crate) fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, actual).expect("write golden file");
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
        assert!(
            expected == actual,
            "{} differs (BLESS=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}
