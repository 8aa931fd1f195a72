//! Reading and writing PEM: files (written whole, then renamed, owner-only), a certificate's
//! DER, its subject, and a credentials file's blocks.

use std::path::Path;

use super::error::TlsError;
use super::subject::Subject;

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the first certificate in `pem`.
pub(super) fn der_of(pem: &str) -> Result<Vec<u8>, String> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(parsed.contents)
}

/// Who the certificate `cert_pem` speaks for: its one metakv SAN URI.
pub fn subject_of(cert_pem: &str) -> Result<Subject, TlsError> {
    subject_of_der(&der_of(cert_pem).map_err(TlsError::NoSubject)?)
}

/// [`subject_of`] a certificate's DER (what a TLS handshake presents).
pub fn subject_of_der(der: &[u8]) -> Result<Subject, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::NoSubject(e.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::NoSubject(e.to_string()))?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let mut subjects = names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => Subject::from_uri(uri),
        _ => None,
    });
    match (subjects.next(), subjects.next()) {
        (Some(s), None) => Ok(s),
        (None, _) => Err(TlsError::NoSubject("no metakv SAN URI".into())),
        (Some(_), Some(_)) => Err(TlsError::NoSubject("more than one metakv SAN URI".into())),
    }
}

pub(super) fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        doing: "reading",
        path: path.to_owned(),
        source,
    })
}

pub(super) fn write(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let io = |doing, source| TlsError::Io {
        doing,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = metakv_store::private::create_file(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming", e))
}

/// The private key blocks of a PEM text (a credentials file keeps its key after its
/// certificates).
pub(super) fn key_blocks(pem: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END") && line.contains("PRIVATE KEY") {
            inside = false;
        }
    }
    out
}

pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    use std::fmt::Write as _;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(
            out,
            "{}",
            std::str::from_utf8(line).expect("base64 is ASCII")
        );
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}
