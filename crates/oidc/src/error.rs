//! What can go wrong talking to a provider in the sign-in flow. Messages
//! name the step; they never carry a secret (the client secret, a code or
//! a token).

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("could not build the HTTP client: {0}")]
    Http(String),
    /// The discovery document could not be fetched or read.
    #[error("the identity provider's discovery document could not be read: {0}")]
    Discovery(String),
    /// The provider answered the sign-in with an error (`?error=`).
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    /// The sign-in attempt does not match the one this browser started
    /// (state), or it is too old.
    #[error(
        "this sign-in attempt is not the one this browser started, or it expired; please start again"
    )]
    StateMismatch,
    /// Exchanging the code for tokens failed.
    #[error("the identity provider did not exchange the sign-in code: {0}")]
    Exchange(String),
    /// The ID token failed verification (signature, issuer, audience,
    /// nonce, expiry).
    #[error("the identity provider's ID token was not accepted: {0}")]
    IdToken(String),
}
