//! Self-made certificate authorities: a CA and a leaf for given names (IP addresses
//! become IP SANs), all PEM. `spillway run --webhook-url` serves with one; tests use them
//! as throw-away CAs.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA and one leaf it signed.
#[derive(Clone, Debug)]
pub struct SelfMadePki {
    /// The CA certificate (what a client trusts, e.g. a webhook `caBundle`).
    pub ca_pem: String,
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

/// Issues a fresh CA and a leaf for `names` (panics on a name rcgen refuses: for tests
/// and names known to be valid).
pub fn issue(names: &[&str]) -> SelfMadePki {
    try_issue(names).expect("valid certificate names")
}

/// Issues a fresh CA and a leaf for `names`, refusing names that cannot be SANs.
pub fn try_issue(names: &[&str]) -> Result<SelfMadePki, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names)?.signed_by(&leaf_key, &issuer)?;
    Ok(SelfMadePki {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}
