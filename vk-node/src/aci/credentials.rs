//! Bearer tokens for Azure Resource Manager. In a cluster they come from the standard
//! Azure credential chain (`azure_identity`): workload identity when its federated token
//! is mounted, a client secret when `AZURE_CLIENT_SECRET` is set, managed identity, then
//! the Azure CLI; the first source that yields a token is kept. `--azure-token-file`
//! reads a token someone else keeps fresh (a sidecar, or a test's fake ARM server).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{
    ClientSecretCredential, DeveloperToolsCredential, ManagedIdentityCredential,
    WorkloadIdentityCredential,
};

use crate::provider::ProviderError;

/// The scope of an ARM token.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// Something that hands out ARM bearer tokens.
pub trait TokenSource: Send + Sync + 'static {
    /// A token valid now (sources cache and refresh them).
    fn bearer(&self) -> impl Future<Output = Result<Secret, ProviderError>> + Send;
}

/// A token read from a file at every request, so whoever writes it may rotate it.
#[derive(Debug)]
pub struct TokenFile(pub PathBuf);

impl TokenSource for TokenFile {
    async fn bearer(&self) -> Result<Secret, ProviderError> {
        let text = tokio::fs::read_to_string(&self.0).await.map_err(|e| {
            ProviderError::Transient(format!("ARM token file {}: {e}", self.0.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ProviderError::Transient(format!(
                "ARM token file {} is empty",
                self.0.display()
            )));
        }
        Ok(Secret::new(token.to_owned()))
    }
}

/// The standard chain: each configured source in order; the first to yield a token is
/// used from then on.
#[derive(Debug)]
pub struct CredentialChain {
    sources: Vec<(&'static str, Arc<dyn TokenCredential>)>,
    chosen: OnceLock<usize>,
}

impl CredentialChain {
    /// The chain for this process's environment. Fails only when no source can even be
    /// set up (a malformed tenant id, say), with each source's reason.
    pub fn from_environment() -> Result<Self, String> {
        let mut sources: Vec<(&'static str, Arc<dyn TokenCredential>)> = Vec::new();
        let mut skipped = Vec::new();
        if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            match WorkloadIdentityCredential::new(None) {
                Ok(c) => sources.push(("workload identity", c)),
                Err(e) => skipped.push(format!("workload identity: {e}")),
            }
        }
        if let (Ok(tenant), Ok(client), Ok(secret)) = (
            std::env::var("AZURE_TENANT_ID"),
            std::env::var("AZURE_CLIENT_ID"),
            std::env::var("AZURE_CLIENT_SECRET"),
        ) {
            match ClientSecretCredential::new(&tenant, client, Secret::new(secret), None) {
                Ok(c) => sources.push(("client secret", c)),
                Err(e) => skipped.push(format!("client secret: {e}")),
            }
        }
        match ManagedIdentityCredential::new(None) {
            Ok(c) => sources.push(("managed identity", c)),
            Err(e) => skipped.push(format!("managed identity: {e}")),
        }
        match DeveloperToolsCredential::new(None) {
            Ok(c) => sources.push(("Azure CLI", c)),
            Err(e) => skipped.push(format!("Azure CLI: {e}")),
        }
        if sources.is_empty() {
            return Err(format!(
                "no Azure credential could be set up: {}",
                skipped.join("; ")
            ));
        }
        Ok(Self {
            sources,
            chosen: OnceLock::new(),
        })
    }
}

impl TokenSource for CredentialChain {
    async fn bearer(&self) -> Result<Secret, ProviderError> {
        if let Some(&index) = self.chosen.get() {
            let (name, source) = &self.sources[index];
            return source
                .get_token(&[ARM_SCOPE], None)
                .await
                .map(|t| t.token)
                .map_err(|e| ProviderError::Transient(format!("Azure token ({name}): {e}")));
        }
        let mut failures = Vec::new();
        for (index, (name, source)) in self.sources.iter().enumerate() {
            match source.get_token(&[ARM_SCOPE], None).await {
                Ok(token) => {
                    tracing::info!(source = name, "Azure credential in use");
                    let _ = self.chosen.set(index);
                    return Ok(token.token);
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        Err(ProviderError::Transient(format!(
            "no Azure credential yielded a token ({})",
            failures.join("; ")
        )))
    }
}

/// Either source, chosen by flags.
#[derive(Debug)]
pub enum Tokens {
    /// `--azure-token-file`.
    File(TokenFile),
    /// The standard chain.
    Chain(CredentialChain),
}

impl TokenSource for Tokens {
    async fn bearer(&self) -> Result<Secret, ProviderError> {
        match self {
            Tokens::File(file) => file.bearer().await,
            Tokens::Chain(chain) => chain.bearer().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_file_is_read_at_each_request_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let file = TokenFile(path.clone());
        assert_eq!(file.bearer().await.unwrap().secret(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(file.bearer().await.unwrap().secret(), "second");
        std::fs::write(&path, "  \n").unwrap();
        assert!(file.bearer().await.unwrap_err().is_retryable());
        let missing = TokenFile(dir.path().join("absent"));
        assert!(missing.bearer().await.unwrap_err().is_retryable());
    }
}
