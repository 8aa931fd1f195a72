//! The CA, subjects, node material on disk, credentials files.

use std::path::Path;

use super::node::{CA_CERT, CA_KEY, NODE_CERT, NODE_KEY};
use super::pem::der_of;
use super::*;

fn node(id: u64) -> Subject {
    Subject::Node {
        cluster: "prod".into(),
        id,
    }
}

#[test]
fn subjects_round_trip_through_their_uri_and_nothing_else_parses() {
    for s in [
        node(7),
        Subject::User {
            cluster: "prod".into(),
            name: "ada".into(),
        },
    ] {
        assert_eq!(Subject::from_uri(&s.uri()), Some(s));
    }
    for bad in [
        "metakv://prod/node/07",
        "metakv://prod/node/-1",
        "metakv://prod/node/1/x",
        "metakv:///node/1",
        "metakv://prod/group/x",
        "https://prod/node/1",
        "metakv://prod/user/",
    ] {
        assert_eq!(Subject::from_uri(bad), None, "{bad}");
    }
}

#[test]
fn an_issued_certificate_names_its_subject_and_chains_to_the_ca() {
    let ca = ClusterCa::create("prod").unwrap();
    let cred = ca.issue(&node(3), Some("127.0.0.1")).unwrap();
    assert_eq!(subject_of(&cred.cert_pem).unwrap(), node(3));
    let leaf_der = der_of(&cred.cert_pem).unwrap();
    let ca_der = der_of(&ca.cert_pem).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    leaf.verify_signature(Some(root.public_key()))
        .expect("the leaf is signed by the CA");
    let other = ClusterCa::create("prod").unwrap();
    let other_der = der_of(&other.cert_pem).unwrap();
    let (_, stranger) = x509_parser::parse_x509_certificate(&other_der).unwrap();
    assert!(
        leaf.verify_signature(Some(stranger.public_key())).is_err(),
        "another CA's key verifies the leaf"
    );
    assert_ne!(ca.fingerprint(), other.fingerprint());
    assert!(root.is_ca());
}

#[test]
fn a_node_makes_its_material_once_owner_only_and_loads_it_back() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(!NodeTls::exists(&data));
    let made = NodeTls::create(&data, &node(1), Some("127.0.0.1")).unwrap();
    assert!(NodeTls::exists(&data));
    let loaded = NodeTls::load(&data, &node(1)).unwrap();
    assert_eq!(loaded.ca.fingerprint(), made.ca.fingerprint());
    assert_eq!(loaded.node.cert_pem, made.node.cert_pem);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join(TLS_DIR)), 0o700);
    for f in [CA_CERT, CA_KEY, NODE_CERT, NODE_KEY] {
        assert_eq!(mode(&data.join(TLS_DIR).join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&data.join(ADMIN_CREDS)), 0o600);
    let creds = std::fs::read_to_string(data.join(ADMIN_CREDS)).unwrap();
    assert!(creds.starts_with(&made.ca.cert_pem));
    let admin_pem = &creds[made.ca.cert_pem.len()..];
    assert_eq!(
        subject_of(admin_pem).unwrap(),
        Subject::User {
            cluster: "prod".into(),
            name: "admin".into()
        }
    );
    let e = NodeTls::load(&data, &node(2)).unwrap_err();
    assert!(matches!(e, TlsError::OtherSubject { .. }), "{e}");
    std::fs::write(data.join(TLS_DIR).join(CA_CERT), "not a certificate").unwrap();
    let e = NodeTls::load(&data, &node(1)).unwrap_err();
    assert!(matches!(e, TlsError::Unreadable { .. }), "{e}");
    assert!(
        !format!("{made:?}").contains("PRIVATE KEY"),
        "a key in Debug output"
    );
}
