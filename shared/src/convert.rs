//! The one place where proto types become domain types (validating every field and naming
//! its path) and domain types become proto types.
//!
//! Proto -> domain produces secrets as [`SecretInput`]: a plaintext value becomes
//! `Set`, an unset secret (or a read-only status echoed back) becomes `Keep`. Domain ->
//! proto takes a value whose secrets were already mapped to `proto::Secret`.

use std::collections::{BTreeMap, BTreeSet};

use jsonwebtoken::jwk::JwkSet;
use portcullis_proto::v1 as proto;
use url::Url;

use crate::config::{
    AgentAuth, AgentAuthMode, ApiKeyLocation, AppAuth, ClientCredentials, CredentialScope,
    CustomValue, DEFAULT_REQUESTED_TOKEN_TYPE, IdentityProvider, JwksSource, JwtValidation,
    McpServer, OAuthApp, OutboundHeader, OutboundSource, StoredCredential, TokenEndpointAuthMethod,
    TokenExchange, Transport,
};
use crate::names::{
    CatalogId, ClaimName, HeaderName, HeaderPattern, Scope, ServerName, UrlPolicy,
    check_header_value, is_token_byte, parse_url,
};
use crate::secret::{SecretInput, SecretStatus, SecretValue};
use crate::template::Template;
use crate::validate::{ValidationErrors, collect};

/// Longest accepted free-text field (descriptions, display names).
const MAX_TEXT_LEN: usize = 1024;
/// Longest accepted inline secret, JWKS or client id.
const MAX_VALUE_LEN: usize = 64 * 1024;

/// Authorization request parameters the gateway sets itself; an OAuth app's extra
/// parameters may not override them.
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "resource",
    "nonce",
];

fn text(errors: &mut ValidationErrors, field: &str, value: String) -> String {
    if value.len() > MAX_TEXT_LEN {
        errors.push(field, format!("must be at most {MAX_TEXT_LEN} bytes"));
    } else if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        errors.push(field, "contains a control character");
    }
    value
}

fn required_text(errors: &mut ValidationErrors, field: &str, value: String) -> String {
    if value.is_empty() {
        errors.push(field, "required");
    } else if value.len() > MAX_VALUE_LEN {
        errors.push(field, format!("must be at most {MAX_VALUE_LEN} bytes"));
    } else if value.chars().any(char::is_control) {
        errors.push(field, "contains a control character");
    }
    value
}

fn optional_text(errors: &mut ValidationErrors, field: &str, value: String) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        Some(required_text(errors, field, value))
    }
}

fn url_field(
    errors: &mut ValidationErrors,
    field: &str,
    value: &str,
    policy: UrlPolicy,
) -> Option<Url> {
    if value.is_empty() {
        errors.push(field, "required");
        return None;
    }
    collect(errors, field, parse_url(value, policy))
}

fn scopes(errors: &mut ValidationErrors, field: &str, values: Vec<String>) -> Vec<Scope> {
    let mut seen = BTreeSet::new();
    let mut parsed = Vec::with_capacity(values.len());
    for (index, value) in values.into_iter().enumerate() {
        let path = format!("{field}[{index}]");
        if let Some(scope) = collect(errors, &path, Scope::parse(&value)) {
            if seen.insert(scope.clone()) {
                parsed.push(scope);
            } else {
                errors.push(path, format!("duplicate scope {value:?}"));
            }
        }
    }
    parsed
}

fn catalog_id(errors: &mut ValidationErrors, field: &str, value: &str) -> Option<CatalogId> {
    collect(errors, field, CatalogId::parse(value))
}

/// Where a plaintext secret goes decides what it may contain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SecretUse {
    /// Placed in an HTTP header value: visible ASCII only.
    Header,
    /// Sent in a form body or a query string (encoded), or used to sign.
    Opaque,
}

fn secret_field(
    errors: &mut ValidationErrors,
    field: &str,
    secret: Option<proto::Secret>,
    secret_use: SecretUse,
) -> SecretInput {
    match secret.and_then(|secret| secret.value) {
        Some(proto::secret::Value::Plaintext(value)) => {
            if value.is_empty() {
                errors.push(
                    field,
                    "must not be empty (leave the secret unset to keep the stored value)",
                );
            } else if value.len() > MAX_VALUE_LEN {
                errors.push(field, format!("must be at most {MAX_VALUE_LEN} bytes"));
            } else if secret_use == SecretUse::Header {
                if let Err(error) = check_header_value(&value) {
                    errors.push(field, format!("cannot be sent in a header: {error}"));
                }
            } else if value.contains('\0') {
                errors.push(field, "contains a NUL byte");
            }
            SecretInput::Set(SecretValue::new(value))
        }
        // An echoed read view (status) or nothing: keep what is stored.
        Some(proto::secret::Value::Status(_)) | None => SecretInput::Keep,
    }
}

fn header_prefix(errors: &mut ValidationErrors, field: &str, prefix: String) -> String {
    if prefix.len() > 64 {
        errors.push(field, "must be at most 64 bytes");
    } else if let Err(error) = check_header_value(&prefix) {
        errors.push(field, error.to_string());
    }
    prefix
}

fn allowed_origin(errors: &mut ValidationErrors, field: &str, value: &str) -> Option<String> {
    let url = match Url::parse(value) {
        Ok(url) => url,
        Err(error) => {
            errors.push(field, format!("not an origin: {error}"));
            return None;
        }
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        errors.push(field, "not an origin: use scheme://host[:port]");
        return None;
    }
    let origin = url.origin().ascii_serialization();
    // An origin has no path, query or credentials; "https://a.example/" is accepted as the
    // same origin, anything longer is a mistake worth reporting.
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        errors.push(
            field,
            "not an origin: remove the path, query and credentials",
        );
        return None;
    }
    Some(origin)
}

/// At most this many keys in an inline JWKS: what a node accepts (`jwt::keys::MAX_KEYS` in
/// the data plane).
pub const MAX_JWKS_KEYS: usize = 64;

/// Validates a JWKS document: it parses, has at least one and at most [`MAX_JWKS_KEYS`]
/// keys, every key is asymmetric and every key is one a node verifies signatures with. A
/// symmetric (`oct`) key would make the verification secret public and invite HS/RS
/// confusion, so it is refused.
pub fn check_jwks_json(json: &str) -> Result<JwkSet, String> {
    if json.len() > MAX_VALUE_LEN {
        return Err(format!("must be at most {MAX_VALUE_LEN} bytes"));
    }
    let set: JwkSet =
        serde_json::from_str(json).map_err(|error| format!("malformed JWKS: {error}"))?;
    if set.keys.is_empty() {
        return Err("malformed JWKS: no keys".to_owned());
    }
    if set.keys.len() > MAX_JWKS_KEYS {
        return Err(format!(
            "the JWKS has {} keys; at most {MAX_JWKS_KEYS} are accepted",
            set.keys.len()
        ));
    }
    for (index, key) in set.keys.iter().enumerate() {
        if matches!(
            key.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
        ) {
            return Err(format!(
                "key {index} is symmetric (kty oct); only public keys belong in a JWKS"
            ));
        }
        jsonwebtoken::DecodingKey::from_jwk(key)
            .map_err(|error| format!("malformed JWKS: key {index} is unusable: {error}"))?;
        if let Err(reason) = verification_key_check(key) {
            return Err(format!(
                "key {index} is unusable for signature verification: {reason}"
            ));
        }
    }
    Ok(set)
}

/// The rules by which a node takes a JWK as a verification key (`VerificationKey::from_jwk`
/// in the data plane's `jwt/keys.rs`): not for encryption, `key_ops` (when present) allow
/// `verify`, RSA from 2048 to 8192 bits, EC on P-256 or P-384 with coordinates of the
/// curve's size, OKP on Ed25519, a declared `alg` that is a signature algorithm of the key's
/// type, and a public key aws-lc-rs accepts. Without them the control plane stored servers
/// that every node then refused (the `jwks_parse` fuzz target checks that both agree).
fn verification_key_check(jwk: &jsonwebtoken::jwk::Jwk) -> Result<(), &'static str> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
    use base64::Engine;
    use jsonwebtoken::jwk::{
        AlgorithmParameters, EllipticCurve, KeyAlgorithm, KeyOperations, PublicKeyUse,
    };

    let decode = |value: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| "a key component is not base64url")
    };
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("the key is for encryption (use enc)");
    }
    if let Some(operations) = &jwk.common.key_operations
        && !operations.contains(&KeyOperations::Verify)
    {
        return Err("the key's key_ops do not include verify");
    }
    use KeyAlgorithm::{ES256, ES384, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512};
    let (algorithms, public_key): (&[KeyAlgorithm], Vec<u8>) = match &jwk.algorithm {
        AlgorithmParameters::RSA(parameters) => {
            let modulus = decode(&parameters.n)?;
            let exponent = decode(&parameters.e)?;
            let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
            if !(256..=1024).contains(&significant) {
                return Err("RSA keys must have from 2048 to 8192 bits");
            }
            let der = RsaPublicKeyComponents {
                n: modulus.as_slice(),
                e: exponent.as_slice(),
            }
            .as_der()
            .map_err(|_| "the RSA key components do not form a public key")?;
            (
                &[RS256, RS384, RS512, PS256, PS384, PS512],
                der.as_ref().to_vec(),
            )
        }
        AlgorithmParameters::EllipticCurve(parameters) => {
            let (algorithms, coordinate_len): (&[KeyAlgorithm], usize) = match parameters.curve {
                EllipticCurve::P256 => (&[ES256], 32),
                EllipticCurve::P384 => (&[ES384], 48),
                _ => return Err("kty EC needs crv P-256 or P-384"),
            };
            let x = decode(&parameters.x)?;
            let y = decode(&parameters.y)?;
            if x.len() != coordinate_len || y.len() != coordinate_len {
                return Err("the EC coordinates do not fit the curve");
            }
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (algorithms, point)
        }
        AlgorithmParameters::OctetKeyPair(parameters) => {
            if parameters.curve != EllipticCurve::Ed25519 {
                return Err("OKP keys must use crv Ed25519");
            }
            let x = decode(&parameters.x)?;
            if x.len() != 32 {
                return Err("an Ed25519 key is 32 bytes");
            }
            (&[EdDSA], x)
        }
        _ => return Err("unsupported key type"),
    };
    let accepted: Vec<KeyAlgorithm> = match jwk.common.key_algorithm {
        None => algorithms.to_vec(),
        Some(declared) if algorithms.contains(&declared) => vec![declared],
        Some(_) => return Err("the key's alg is not a signature algorithm of its key type"),
    };
    for algorithm in accepted {
        let verification: &'static dyn signature::VerificationAlgorithm = match algorithm {
            RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            ES384 => &signature::ECDSA_P384_SHA384_FIXED,
            _ => &signature::ED25519,
        };
        ParsedPublicKey::new(verification, public_key.as_slice())
            .map_err(|_| "the public key is invalid")?;
    }
    Ok(())
}

impl TryFrom<proto::McpServer> for McpServer<SecretInput> {
    type Error = ValidationErrors;

    fn try_from(server: proto::McpServer) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = collect(&mut errors, "name", ServerName::parse(&server.name));
        let upstream_url = url_field(
            &mut errors,
            "upstream_url",
            &server.upstream_url,
            UrlPolicy::Upstream,
        );
        let transport = match proto::Transport::try_from(server.transport) {
            Ok(proto::Transport::Unspecified | proto::Transport::StreamableHttp) => {
                Transport::StreamableHttp
            }
            Ok(proto::Transport::LegacySse) => Transport::LegacySse,
            Err(_) => {
                errors.push(
                    "transport",
                    format!("unknown transport {}", server.transport),
                );
                Transport::StreamableHttp
            }
        };
        let mut allowed_origins = Vec::new();
        for (index, origin) in server.allowed_origins.iter().enumerate() {
            if let Some(origin) =
                allowed_origin(&mut errors, &format!("allowed_origins[{index}]"), origin)
            {
                allowed_origins.push(origin);
            }
        }
        let description = text(&mut errors, "description", server.description);
        let agent_auth = match server.agent_auth {
            Some(agent_auth) => match AgentAuth::try_from(agent_auth) {
                Ok(agent_auth) => Some(agent_auth),
                Err(nested) => {
                    errors.extend_prefixed("agent_auth", nested);
                    None
                }
            },
            None => {
                errors.push("agent_auth", "required: interactive or passthrough");
                None
            }
        };
        let app_auth = match server.app_auth {
            Some(app_auth) => match AppAuth::try_from(app_auth) {
                Ok(app_auth) => Some(app_auth),
                Err(nested) => {
                    errors.extend_prefixed("app_auth", nested);
                    None
                }
            },
            None => {
                errors.push(
                    "app_auth",
                    "required: oauth_authorization, client_credentials, api_key, bearer, basic or passthrough",
                );
                None
            }
        };
        let mut outbound_headers: Vec<OutboundHeader<SecretInput>> = Vec::new();
        for (index, header) in server.outbound_headers.into_iter().enumerate() {
            let field = if header.header_name.is_empty() {
                format!("outbound_headers[{index}]")
            } else {
                format!(
                    "outbound_headers[{}]",
                    header.header_name.to_ascii_lowercase()
                )
            };
            match OutboundHeader::try_from(header) {
                Ok(header) => {
                    if outbound_headers
                        .iter()
                        .any(|existing| existing.header_name == header.header_name)
                    {
                        errors.push(field, "duplicate outbound header");
                    } else {
                        outbound_headers.push(header);
                    }
                }
                Err(nested) => errors.extend_prefixed(&field, nested),
            }
        }
        if let Some(app_auth) = &app_auth {
            errors.extend_prefixed("", check_header_conflicts(app_auth, &outbound_headers));
        }
        match (name, upstream_url, agent_auth, app_auth) {
            (Some(name), Some(upstream_url), Some(agent_auth), Some(app_auth))
                if errors.is_empty() =>
            {
                Ok(McpServer {
                    name,
                    upstream_url,
                    transport,
                    allowed_origins,
                    description,
                    agent_auth,
                    app_auth,
                    outbound_headers,
                })
            }
            _ => Err(errors),
        }
    }
}

/// The header app authentication writes, if any: an outbound header may not overwrite it.
pub fn app_auth_header<S>(app_auth: &AppAuth<S>) -> Option<String> {
    match app_auth {
        AppAuth::OAuthAuthorization { .. }
        | AppAuth::ClientCredentials(_)
        | AppAuth::Bearer { .. }
        | AppAuth::Basic { .. }
        | AppAuth::Passthrough => Some("authorization".to_owned()),
        AppAuth::ApiKey {
            key_name,
            location: ApiKeyLocation::Header,
            ..
        } => Some(key_name.to_ascii_lowercase()),
        AppAuth::ApiKey {
            location: ApiKeyLocation::Query,
            ..
        } => None,
    }
}

/// An outbound header may not overwrite the header app authentication writes.
pub fn check_header_conflicts<S>(
    app_auth: &AppAuth<S>,
    outbound_headers: &[OutboundHeader<S>],
) -> ValidationErrors {
    let mut errors = ValidationErrors::default();
    if let Some(app_header) = app_auth_header(app_auth) {
        for header in outbound_headers {
            if header.header_name.as_str() == app_header {
                errors.push(
                    header.path(),
                    format!(
                        "header {app_header:?} is already set by app authentication ({})",
                        app_auth.kind_name()
                    ),
                );
            }
        }
    }
    errors
}

impl TryFrom<proto::AgentAuth> for AgentAuth {
    type Error = ValidationErrors;

    fn try_from(agent_auth: proto::AgentAuth) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut restricted_inbound_headers = Vec::new();
        for (index, pattern) in agent_auth.restricted_inbound_headers.iter().enumerate() {
            if let Some(pattern) = collect(
                &mut errors,
                &format!("restricted_inbound_headers[{index}]"),
                HeaderPattern::parse(pattern),
            ) {
                restricted_inbound_headers.push(pattern);
            }
        }
        let mode = match agent_auth.mode {
            Some(proto::agent_auth::Mode::Interactive(interactive)) => {
                let identity_provider = catalog_id(
                    &mut errors,
                    "interactive.identity_provider",
                    &interactive.identity_provider,
                );
                let scopes = scopes(&mut errors, "interactive.scopes", interactive.scopes);
                identity_provider.map(|identity_provider| AgentAuthMode::Interactive {
                    identity_provider,
                    scopes,
                })
            }
            Some(proto::agent_auth::Mode::Passthrough(passthrough)) => {
                let jwt_validation = match passthrough.jwt_validation {
                    Some(validation) => {
                        jwt_validation(&mut errors, "passthrough.jwt_validation", validation)
                    }
                    None => None,
                };
                Some(AgentAuthMode::Passthrough { jwt_validation })
            }
            None => {
                errors.push("mode", "required: interactive or passthrough");
                None
            }
        };
        match mode {
            Some(mode) if errors.is_empty() => Ok(AgentAuth {
                mode,
                restricted_inbound_headers,
            }),
            _ => Err(errors),
        }
    }
}

fn jwt_validation(
    errors: &mut ValidationErrors,
    field: &str,
    validation: proto::JwtValidation,
) -> Option<JwtValidation> {
    let jwks = match (
        validation.jwks_url.is_empty(),
        validation.jwks_json.is_empty(),
    ) {
        (false, true) => url_field(
            errors,
            &format!("{field}.jwks_url"),
            &validation.jwks_url,
            UrlPolicy::CredentialEndpoint,
        )
        .map(JwksSource::Url),
        (true, false) => match check_jwks_json(&validation.jwks_json) {
            Ok(_) => Some(JwksSource::Inline(validation.jwks_json)),
            Err(message) => {
                errors.push(format!("{field}.jwks_json"), message);
                None
            }
        },
        (false, false) => {
            errors.push(field, "set exactly one of jwks_url and jwks_json, not both");
            None
        }
        (true, true) => {
            errors.push(field, "set exactly one of jwks_url and jwks_json");
            None
        }
    };
    let issuer = optional_text(errors, &format!("{field}.issuer"), validation.issuer);
    let audience = optional_text(errors, &format!("{field}.audience"), validation.audience);
    jwks.map(|jwks| JwtValidation {
        jwks,
        issuer,
        audience,
    })
}

fn client_credentials(
    errors: &mut ValidationErrors,
    field: &str,
    token_url: &str,
    client_id: String,
    client_secret: Option<proto::Secret>,
    scope_values: Vec<String>,
    audience: String,
) -> Option<ClientCredentials<SecretInput>> {
    let token_url = url_field(
        errors,
        &format!("{field}.token_url"),
        token_url,
        UrlPolicy::CredentialEndpoint,
    );
    let client_id = required_text(errors, &format!("{field}.client_id"), client_id);
    let client_secret = secret_field(
        errors,
        &format!("{field}.client_secret"),
        client_secret,
        SecretUse::Opaque,
    );
    let scopes = scopes(errors, &format!("{field}.scopes"), scope_values);
    let audience = optional_text(errors, &format!("{field}.audience"), audience);
    token_url.map(|token_url| ClientCredentials {
        token_url,
        client_id,
        client_secret,
        scopes,
        audience,
    })
}

impl TryFrom<proto::AppAuth> for AppAuth<SecretInput> {
    type Error = ValidationErrors;

    fn try_from(app_auth: proto::AppAuth) -> Result<Self, ValidationErrors> {
        use proto::app_auth::Kind;
        let mut errors = ValidationErrors::default();
        let parsed = match app_auth.kind {
            Some(Kind::OauthAuthorization(oauth)) => {
                let app_id = catalog_id(&mut errors, "oauth_authorization.app_id", &oauth.app_id);
                let scopes = scopes(&mut errors, "oauth_authorization.scopes", oauth.scopes);
                app_id.map(|app_id| AppAuth::OAuthAuthorization { app_id, scopes })
            }
            Some(Kind::ClientCredentials(config)) => client_credentials(
                &mut errors,
                "client_credentials",
                &config.token_url,
                config.client_id,
                config.client_secret,
                config.scopes,
                config.audience,
            )
            .map(AppAuth::ClientCredentials),
            Some(Kind::ApiKey(api_key)) => {
                let location = match proto::ApiKeyLocation::try_from(api_key.location) {
                    Ok(proto::ApiKeyLocation::Header) => Some(ApiKeyLocation::Header),
                    Ok(proto::ApiKeyLocation::Query) => Some(ApiKeyLocation::Query),
                    Ok(proto::ApiKeyLocation::Unspecified) | Err(_) => {
                        errors.push("api_key.location", "required: header or query");
                        None
                    }
                };
                let key_name = match location {
                    Some(ApiKeyLocation::Header) => collect(
                        &mut errors,
                        "api_key.key_name",
                        HeaderName::parse(&api_key.key_name),
                    )
                    .map(String::from),
                    _ => {
                        if api_key.key_name.is_empty() {
                            errors.push("api_key.key_name", "required");
                            None
                        } else if api_key.key_name.len() > 128
                            || !api_key.key_name.bytes().all(is_token_byte)
                        {
                            errors.push(
                                "api_key.key_name",
                                "not a valid parameter name (use letters, digits and -._~)",
                            );
                            None
                        } else {
                            Some(api_key.key_name)
                        }
                    }
                };
                let key_value = secret_field(
                    &mut errors,
                    "api_key.key_value",
                    api_key.key_value,
                    match location {
                        Some(ApiKeyLocation::Query) => SecretUse::Opaque,
                        _ => SecretUse::Header,
                    },
                );
                match (key_name, location) {
                    (Some(key_name), Some(location)) => Some(AppAuth::ApiKey {
                        key_name,
                        key_value,
                        location,
                    }),
                    _ => None,
                }
            }
            Some(Kind::Bearer(bearer)) => Some(AppAuth::Bearer {
                token: secret_field(&mut errors, "bearer.token", bearer.token, SecretUse::Header),
            }),
            Some(Kind::Basic(basic)) => {
                if basic.username.contains(':') {
                    errors.push("basic.username", "must not contain ':' (RFC 7617)");
                }
                let username = required_text(&mut errors, "basic.username", basic.username);
                let password = secret_field(
                    &mut errors,
                    "basic.password",
                    basic.password,
                    SecretUse::Opaque,
                );
                Some(AppAuth::Basic { username, password })
            }
            Some(Kind::Passthrough(_)) => Some(AppAuth::Passthrough),
            None => {
                errors.push(
                    "kind",
                    "required: oauth_authorization, client_credentials, api_key, bearer, basic or passthrough",
                );
                None
            }
        };
        match parsed {
            Some(parsed) if errors.is_empty() => Ok(parsed),
            _ => Err(errors),
        }
    }
}

impl TryFrom<proto::OutboundHeader> for OutboundHeader<SecretInput> {
    type Error = ValidationErrors;

    fn try_from(header: proto::OutboundHeader) -> Result<Self, ValidationErrors> {
        use proto::outbound_header::Source;
        let mut errors = ValidationErrors::default();
        let header_name = if header.header_name.is_empty() {
            errors.push("header_name", "required");
            None
        } else {
            collect(
                &mut errors,
                "header_name",
                HeaderName::parse(&header.header_name),
            )
        };
        let prefix = header_prefix(&mut errors, "prefix", header.prefix);
        let source = match header.source {
            Some(Source::ServiceToken(token)) => client_credentials(
                &mut errors,
                "service_token",
                &token.token_url,
                token.client_id,
                token.client_secret,
                token.scopes,
                token.audience,
            )
            .map(OutboundSource::ServiceToken),
            Some(Source::ForwardCallerToken(_)) => Some(OutboundSource::ForwardCallerToken),
            Some(Source::OnBehalfOf(exchange)) => {
                let exchange_url = url_field(
                    &mut errors,
                    "on_behalf_of.exchange_url",
                    &exchange.exchange_url,
                    UrlPolicy::CredentialEndpoint,
                );
                let client_id =
                    required_text(&mut errors, "on_behalf_of.client_id", exchange.client_id);
                let client_secret = secret_field(
                    &mut errors,
                    "on_behalf_of.client_secret",
                    exchange.client_secret,
                    SecretUse::Opaque,
                );
                let audience =
                    optional_text(&mut errors, "on_behalf_of.audience", exchange.audience);
                let scopes = scopes(&mut errors, "on_behalf_of.scopes", exchange.scopes);
                let requested_token_type = if exchange.requested_token_type.is_empty() {
                    DEFAULT_REQUESTED_TOKEN_TYPE.to_owned()
                } else {
                    required_text(
                        &mut errors,
                        "on_behalf_of.requested_token_type",
                        exchange.requested_token_type,
                    )
                };
                exchange_url.map(|exchange_url| {
                    OutboundSource::OnBehalfOf(TokenExchange {
                        exchange_url,
                        client_id,
                        client_secret,
                        audience,
                        scopes,
                        requested_token_type,
                    })
                })
            }
            Some(Source::VaultCredential(vault)) => {
                let credential_id = catalog_id(
                    &mut errors,
                    "vault_credential.credential_id",
                    &vault.credential_id,
                );
                let scope = match proto::CredentialScope::try_from(vault.scope) {
                    Ok(proto::CredentialScope::OrgWide) => Some(CredentialScope::OrgWide),
                    Ok(proto::CredentialScope::PerUser) => Some(CredentialScope::PerUser),
                    Ok(proto::CredentialScope::Unspecified) | Err(_) => {
                        errors.push("vault_credential.scope", "required: org_wide or per_user");
                        None
                    }
                };
                match (credential_id, scope) {
                    (Some(credential_id), Some(scope)) => Some(OutboundSource::VaultCredential {
                        credential_id,
                        scope,
                    }),
                    _ => None,
                }
            }
            Some(Source::CallerIdentity(identity)) => collect(
                &mut errors,
                "caller_identity.claim",
                ClaimName::parse(&identity.claim),
            )
            .map(|claim| OutboundSource::CallerIdentity { claim }),
            Some(Source::Custom(custom)) => {
                use proto::custom_header::Value;
                match custom.value {
                    Some(Value::StaticValue(value)) => {
                        if value.is_empty() {
                            errors.push("custom.static_value", "required");
                        } else if value.len() > 8192 {
                            errors.push("custom.static_value", "must be at most 8192 bytes");
                        } else if let Err(error) = check_header_value(&value) {
                            errors.push("custom.static_value", error.to_string());
                        }
                        Some(OutboundSource::Custom(CustomValue::Static(value)))
                    }
                    Some(Value::Secret(secret)) => {
                        Some(OutboundSource::Custom(CustomValue::Secret(secret_field(
                            &mut errors,
                            "custom.secret",
                            Some(secret),
                            SecretUse::Header,
                        ))))
                    }
                    Some(Value::Template(template)) => {
                        collect(&mut errors, "custom.template", Template::parse(&template))
                            .map(|template| OutboundSource::Custom(CustomValue::Template(template)))
                    }
                    None => {
                        errors.push("custom.value", "required: static_value, secret or template");
                        None
                    }
                }
            }
            None => {
                errors.push(
                    "source",
                    "required: service_token, forward_caller_token, on_behalf_of, vault_credential, caller_identity or custom",
                );
                None
            }
        };
        match (header_name, source) {
            (Some(header_name), Some(source)) if errors.is_empty() => Ok(OutboundHeader {
                header_name,
                prefix,
                source,
            }),
            _ => Err(errors),
        }
    }
}

fn claim_or_default(
    errors: &mut ValidationErrors,
    field: &str,
    value: &str,
    default: &str,
) -> ClaimName {
    let value = if value.is_empty() { default } else { value };
    collect(errors, field, ClaimName::parse(value))
        .unwrap_or_else(|| ClaimName::parse(default).expect("default claims are valid"))
}

fn optional_secret_field(
    errors: &mut ValidationErrors,
    field: &str,
    secret: Option<proto::Secret>,
) -> Option<SecretInput> {
    Some(secret_field(errors, field, secret, SecretUse::Opaque))
}

impl TryFrom<proto::IdentityProvider> for IdentityProvider<SecretInput> {
    type Error = ValidationErrors;

    fn try_from(idp: proto::IdentityProvider) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let id = catalog_id(&mut errors, "id", &idp.id);
        let issuer = url_field(
            &mut errors,
            "issuer",
            &idp.issuer,
            UrlPolicy::CredentialEndpoint,
        );
        let client_id = required_text(&mut errors, "client_id", idp.client_id);
        let client_secret = optional_secret_field(&mut errors, "client_secret", idp.client_secret);
        let mut scope_values = idp.scopes;
        if scope_values.is_empty() {
            scope_values = vec!["openid".into(), "email".into(), "profile".into()];
        } else if !scope_values.iter().any(|scope| scope == "openid") {
            errors.push(
                "scopes",
                "must include \"openid\" (the login is OpenID Connect)",
            );
        }
        let scopes = scopes(&mut errors, "scopes", scope_values);
        let user_id_claim =
            claim_or_default(&mut errors, "user_id_claim", &idp.user_id_claim, "sub");
        let email_claim = claim_or_default(&mut errors, "email_claim", &idp.email_claim, "email");
        let groups_claim =
            claim_or_default(&mut errors, "groups_claim", &idp.groups_claim, "groups");
        let display_name = text(&mut errors, "display_name", idp.display_name);
        let token_resource = if idp.token_resource.is_empty() {
            None
        } else {
            // Validated as a URL, kept exactly as written: providers compare the resource
            // (audience) as a string, and `Url` would add a trailing slash to a bare origin.
            url_field(
                &mut errors,
                "token_resource",
                &idp.token_resource,
                UrlPolicy::Upstream,
            )
            .map(|_| idp.token_resource.clone())
        };
        match (id, issuer) {
            (Some(id), Some(issuer)) if errors.is_empty() => Ok(IdentityProvider {
                id,
                display_name,
                issuer,
                client_id,
                client_secret,
                scopes,
                user_id_claim,
                email_claim,
                groups_claim,
                token_resource,
            }),
            _ => Err(errors),
        }
    }
}

impl TryFrom<proto::OAuthApp> for OAuthApp<SecretInput> {
    type Error = ValidationErrors;

    fn try_from(app: proto::OAuthApp) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let app_id = catalog_id(&mut errors, "app_id", &app.app_id);
        let authorize_url = url_field(
            &mut errors,
            "authorize_url",
            &app.authorize_url,
            UrlPolicy::CredentialEndpoint,
        );
        let token_url = url_field(
            &mut errors,
            "token_url",
            &app.token_url,
            UrlPolicy::CredentialEndpoint,
        );
        let revocation_url = if app.revocation_url.is_empty() {
            None
        } else {
            url_field(
                &mut errors,
                "revocation_url",
                &app.revocation_url,
                UrlPolicy::CredentialEndpoint,
            )
        };
        let client_id = required_text(&mut errors, "client_id", app.client_id);
        let client_secret = optional_secret_field(&mut errors, "client_secret", app.client_secret);
        let default_scopes = scopes(&mut errors, "default_scopes", app.default_scopes);
        let mut extra_authorize_params = BTreeMap::new();
        for (key, value) in app.extra_authorize_params {
            let field = format!("extra_authorize_params[{key}]");
            if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
                errors.push(field, "not a valid parameter name");
            } else if RESERVED_AUTHORIZE_PARAMS.contains(&key.as_str()) {
                errors.push(field, "is set by the gateway and cannot be overridden");
            } else if value.len() > MAX_TEXT_LEN || value.chars().any(char::is_control) {
                errors.push(
                    field,
                    "value must be at most 1024 bytes without control characters",
                );
            } else {
                extra_authorize_params.insert(key, value);
            }
        }
        let display_name = text(&mut errors, "display_name", app.display_name);
        let token_endpoint_auth_method = match app.token_endpoint_auth_method.as_str() {
            "" | "client_secret_basic" => TokenEndpointAuthMethod::ClientSecretBasic,
            "client_secret_post" => TokenEndpointAuthMethod::ClientSecretPost,
            "none" => TokenEndpointAuthMethod::None,
            other => {
                errors.push(
                    "token_endpoint_auth_method",
                    format!(
                        "unknown method {other:?}: client_secret_basic, client_secret_post or none"
                    ),
                );
                TokenEndpointAuthMethod::ClientSecretBasic
            }
        };
        match (app_id, authorize_url, token_url) {
            (Some(app_id), Some(authorize_url), Some(token_url)) if errors.is_empty() => {
                Ok(OAuthApp {
                    app_id,
                    display_name,
                    authorize_url,
                    token_url,
                    revocation_url,
                    client_id,
                    client_secret,
                    default_scopes,
                    extra_authorize_params,
                    token_endpoint_auth_method,
                })
            }
            _ => Err(errors),
        }
    }
}

/// A stored credential as an admin writes it: id, description and the org-wide value.
/// Per-user values are written one at a time by their own commands.
pub fn stored_credential_from_proto(
    credential: proto::StoredCredential,
) -> Result<StoredCredential<SecretInput>, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let id = catalog_id(&mut errors, "id", &credential.id);
    let description = text(&mut errors, "description", credential.description);
    let org_value = match &credential.org_value {
        Some(proto::Secret {
            value: Some(proto::secret::Value::Plaintext(_)),
        }) => Some(secret_field(
            &mut errors,
            "org_value",
            credential.org_value,
            SecretUse::Header,
        )),
        _ => Some(SecretInput::Keep),
    };
    match id {
        Some(id) if errors.is_empty() => Ok(StoredCredential {
            id,
            description,
            org_value,
            user_values: BTreeMap::new(),
        }),
        _ => Err(errors),
    }
}

/// Checks a plaintext per-user credential value as it will be placed in a header.
pub fn check_user_credential_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(format!("must be at most {MAX_VALUE_LEN} bytes"));
    }
    check_header_value(value).map_err(|error| format!("cannot be sent in a header: {error}"))
}

// ---------------------------------------------------------------------------------------
// Domain -> proto. Secrets were already mapped to `proto::Secret` by the caller.

/// A secret as a reader sees it.
pub fn secret_status_proto(status: SecretStatus) -> proto::Secret {
    proto::Secret {
        value: Some(proto::secret::Value::Status(proto::SecretStatus {
            set: status.set,
            fingerprint: status.fingerprint,
        })),
    }
}

/// A secret as a node receives it.
pub fn secret_plaintext_proto(secret: &SecretValue) -> proto::Secret {
    proto::Secret {
        value: Some(proto::secret::Value::Plaintext(secret.expose().to_owned())),
    }
}

fn strings<T: ToString>(values: &[T]) -> Vec<String> {
    values.iter().map(ToString::to_string).collect()
}

impl From<AgentAuth> for proto::AgentAuth {
    fn from(agent_auth: AgentAuth) -> Self {
        let mode = match agent_auth.mode {
            AgentAuthMode::Interactive {
                identity_provider,
                scopes,
            } => proto::agent_auth::Mode::Interactive(proto::InteractiveSso {
                identity_provider: identity_provider.into(),
                scopes: strings(&scopes),
            }),
            AgentAuthMode::Passthrough { jwt_validation } => {
                proto::agent_auth::Mode::Passthrough(proto::PassthroughAgent {
                    jwt_validation: jwt_validation.map(|validation| {
                        let (jwks_url, jwks_json) = match validation.jwks {
                            JwksSource::Url(url) => (url.to_string(), String::new()),
                            JwksSource::Inline(json) => (String::new(), json),
                        };
                        proto::JwtValidation {
                            jwks_url,
                            jwks_json,
                            issuer: validation.issuer.unwrap_or_default(),
                            audience: validation.audience.unwrap_or_default(),
                        }
                    }),
                })
            }
        };
        proto::AgentAuth {
            mode: Some(mode),
            restricted_inbound_headers: strings(&agent_auth.restricted_inbound_headers),
        }
    }
}

impl From<AppAuth<proto::Secret>> for proto::AppAuth {
    fn from(app_auth: AppAuth<proto::Secret>) -> Self {
        use proto::app_auth::Kind;
        let kind = match app_auth {
            AppAuth::OAuthAuthorization { app_id, scopes } => {
                Kind::OauthAuthorization(proto::OAuthAuthorization {
                    app_id: app_id.into(),
                    scopes: strings(&scopes),
                })
            }
            AppAuth::ClientCredentials(config) => {
                Kind::ClientCredentials(proto::ClientCredentials {
                    token_url: config.token_url.to_string(),
                    client_id: config.client_id,
                    client_secret: Some(config.client_secret),
                    scopes: strings(&config.scopes),
                    audience: config.audience.unwrap_or_default(),
                })
            }
            AppAuth::ApiKey {
                key_name,
                key_value,
                location,
            } => Kind::ApiKey(proto::ApiKey {
                key_name,
                key_value: Some(key_value),
                location: match location {
                    ApiKeyLocation::Header => proto::ApiKeyLocation::Header,
                    ApiKeyLocation::Query => proto::ApiKeyLocation::Query,
                } as i32,
            }),
            AppAuth::Bearer { token } => Kind::Bearer(proto::BearerToken { token: Some(token) }),
            AppAuth::Basic { username, password } => Kind::Basic(proto::BasicAuth {
                username,
                password: Some(password),
            }),
            AppAuth::Passthrough => Kind::Passthrough(proto::PassthroughApp {}),
        };
        proto::AppAuth { kind: Some(kind) }
    }
}

impl From<OutboundHeader<proto::Secret>> for proto::OutboundHeader {
    fn from(header: OutboundHeader<proto::Secret>) -> Self {
        use proto::outbound_header::Source;
        let source = match header.source {
            OutboundSource::ServiceToken(config) => Source::ServiceToken(proto::ServiceToken {
                token_url: config.token_url.to_string(),
                client_id: config.client_id,
                client_secret: Some(config.client_secret),
                scopes: strings(&config.scopes),
                audience: config.audience.unwrap_or_default(),
            }),
            OutboundSource::ForwardCallerToken => {
                Source::ForwardCallerToken(proto::ForwardCallerToken {})
            }
            OutboundSource::OnBehalfOf(exchange) => Source::OnBehalfOf(proto::OnBehalfOf {
                exchange_url: exchange.exchange_url.to_string(),
                client_id: exchange.client_id,
                client_secret: Some(exchange.client_secret),
                audience: exchange.audience.unwrap_or_default(),
                scopes: strings(&exchange.scopes),
                requested_token_type: exchange.requested_token_type,
            }),
            OutboundSource::VaultCredential {
                credential_id,
                scope,
            } => Source::VaultCredential(proto::VaultCredential {
                credential_id: credential_id.into(),
                scope: match scope {
                    CredentialScope::OrgWide => proto::CredentialScope::OrgWide,
                    CredentialScope::PerUser => proto::CredentialScope::PerUser,
                } as i32,
            }),
            OutboundSource::CallerIdentity { claim } => {
                Source::CallerIdentity(proto::CallerIdentity {
                    claim: claim.into(),
                })
            }
            OutboundSource::Custom(value) => {
                use proto::custom_header::Value;
                Source::Custom(proto::CustomHeader {
                    value: Some(match value {
                        CustomValue::Static(text) => Value::StaticValue(text),
                        CustomValue::Secret(secret) => Value::Secret(secret),
                        CustomValue::Template(template) => Value::Template(template.into()),
                    }),
                })
            }
        };
        proto::OutboundHeader {
            header_name: header.header_name.into(),
            prefix: header.prefix,
            source: Some(source),
        }
    }
}

impl From<McpServer<proto::Secret>> for proto::McpServer {
    fn from(server: McpServer<proto::Secret>) -> Self {
        proto::McpServer {
            name: server.name.into(),
            upstream_url: server.upstream_url.to_string(),
            transport: match server.transport {
                Transport::StreamableHttp => proto::Transport::StreamableHttp,
                Transport::LegacySse => proto::Transport::LegacySse,
            } as i32,
            allowed_origins: server.allowed_origins,
            agent_auth: Some(server.agent_auth.into()),
            app_auth: Some(server.app_auth.into()),
            outbound_headers: server
                .outbound_headers
                .into_iter()
                .map(Into::into)
                .collect(),
            description: server.description,
        }
    }
}

impl From<IdentityProvider<proto::Secret>> for proto::IdentityProvider {
    fn from(idp: IdentityProvider<proto::Secret>) -> Self {
        proto::IdentityProvider {
            id: idp.id.into(),
            issuer: idp.issuer.to_string(),
            client_id: idp.client_id,
            client_secret: idp.client_secret,
            scopes: strings(&idp.scopes),
            user_id_claim: idp.user_id_claim.into(),
            email_claim: idp.email_claim.into(),
            groups_claim: idp.groups_claim.into(),
            token_resource: idp.token_resource.unwrap_or_default(),
            display_name: idp.display_name,
        }
    }
}

impl From<OAuthApp<proto::Secret>> for proto::OAuthApp {
    fn from(app: OAuthApp<proto::Secret>) -> Self {
        proto::OAuthApp {
            app_id: app.app_id.into(),
            authorize_url: app.authorize_url.to_string(),
            token_url: app.token_url.to_string(),
            revocation_url: app
                .revocation_url
                .map(|url| url.to_string())
                .unwrap_or_default(),
            client_id: app.client_id,
            client_secret: app.client_secret,
            default_scopes: strings(&app.default_scopes),
            extra_authorize_params: app.extra_authorize_params.into_iter().collect(),
            display_name: app.display_name,
            token_endpoint_auth_method: app.token_endpoint_auth_method.as_str().to_owned(),
        }
    }
}

/// A stored credential for readers: per-user values appear as status only.
pub fn stored_credential_to_proto(
    credential: StoredCredential<SecretStatus>,
) -> proto::StoredCredential {
    proto::StoredCredential {
        id: credential.id.into(),
        description: credential.description,
        org_value: credential.org_value.map(secret_status_proto),
        user_values: credential
            .user_values
            .into_iter()
            .map(|(user, status)| proto::UserCredentialStatus {
                user: user.into(),
                status: Some(proto::SecretStatus {
                    set: status.set,
                    fingerprint: status.fingerprint,
                }),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Gateway keys and revocations.

use crate::gateway::{
    GatewayKeyState, GatewayKeys, RevokedGrants, RevokedUsers, SIGNING_ALGORITHM, SealingKey,
    SigningKey,
};

fn key_state(errors: &mut ValidationErrors, field: &str, state: i32) -> GatewayKeyState {
    match proto::GatewayKeyState::try_from(state) {
        Ok(proto::GatewayKeyState::Active) => GatewayKeyState::Active,
        Ok(proto::GatewayKeyState::VerifyOnly) => GatewayKeyState::VerifyOnly,
        Ok(proto::GatewayKeyState::Unspecified) | Err(_) => {
            errors.push(field, "required: active or verify_only");
            GatewayKeyState::VerifyOnly
        }
    }
}

fn key_state_proto(state: GatewayKeyState) -> i32 {
    match state {
        GatewayKeyState::Active => proto::GatewayKeyState::Active as i32,
        GatewayKeyState::VerifyOnly => proto::GatewayKeyState::VerifyOnly as i32,
    }
}

/// Converts gateway keys, checking ids, algorithms, public keys and that at most one key of
/// each kind is active.
pub fn gateway_keys_from_proto(
    keys: proto::GatewayKeys,
) -> Result<GatewayKeys<SecretInput>, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let mut parsed = GatewayKeys::default();
    let mut kids = BTreeSet::new();
    for key in keys.signing_keys {
        let field = format!("signing_keys[{}]", key.kid);
        if key.kid.is_empty()
            || key.kid.len() > 64
            || !key.kid.bytes().all(|b| b.is_ascii_graphic())
        {
            errors.push(&field, "kid must be 1 to 64 visible ASCII characters");
        } else if !kids.insert(key.kid.clone()) {
            errors.push(&field, "duplicate kid");
        }
        if key.algorithm != SIGNING_ALGORITHM {
            errors.push(
                format!("{field}.algorithm"),
                format!("must be {SIGNING_ALGORITHM}"),
            );
        }
        match serde_json::from_str::<jsonwebtoken::jwk::Jwk>(&key.public_jwk) {
            Ok(jwk) => {
                if !matches!(
                    jwk.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_)
                ) || jsonwebtoken::DecodingKey::from_jwk(&jwk).is_err()
                {
                    errors.push(format!("{field}.public_jwk"), "not an EC public key");
                }
            }
            Err(error) => errors.push(
                format!("{field}.public_jwk"),
                format!("malformed JWK: {error}"),
            ),
        }
        let state = key_state(&mut errors, &format!("{field}.state"), key.state);
        let private_key = secret_field(
            &mut errors,
            &format!("{field}.private_key"),
            key.private_key,
            SecretUse::Opaque,
        );
        parsed.signing_keys.push(SigningKey {
            kid: key.kid,
            algorithm: key.algorithm,
            private_key,
            public_jwk: key.public_jwk,
            created_at_unix: key.created_at_unix,
            state,
        });
    }
    for key in keys.sealing_keys {
        let field = format!("sealing_keys[{}]", key.kid);
        if key.kid.is_empty()
            || key.kid.len() > 64
            || !key.kid.bytes().all(|b| b.is_ascii_graphic())
        {
            errors.push(&field, "kid must be 1 to 64 visible ASCII characters");
        } else if !kids.insert(key.kid.clone()) {
            errors.push(&field, "duplicate kid");
        }
        let state = key_state(&mut errors, &format!("{field}.state"), key.state);
        let secret = secret_field(
            &mut errors,
            &format!("{field}.key"),
            key.key,
            SecretUse::Opaque,
        );
        parsed.sealing_keys.push(SealingKey {
            kid: key.kid,
            key: secret,
            created_at_unix: key.created_at_unix,
            state,
        });
    }
    let active_signing = parsed
        .signing_keys
        .iter()
        .filter(|key| key.state == GatewayKeyState::Active)
        .count();
    let active_sealing = parsed
        .sealing_keys
        .iter()
        .filter(|key| key.state == GatewayKeyState::Active)
        .count();
    if active_signing > 1 {
        errors.push("signing_keys", "more than one active key");
    }
    if active_sealing > 1 {
        errors.push("sealing_keys", "more than one active key");
    }
    errors.into_result(parsed)
}

impl From<GatewayKeys<proto::Secret>> for proto::GatewayKeys {
    fn from(keys: GatewayKeys<proto::Secret>) -> Self {
        proto::GatewayKeys {
            signing_keys: keys
                .signing_keys
                .into_iter()
                .map(|key| proto::SigningKey {
                    kid: key.kid,
                    algorithm: key.algorithm,
                    private_key: Some(key.private_key),
                    public_jwk: key.public_jwk,
                    created_at_unix: key.created_at_unix,
                    state: key_state_proto(key.state),
                })
                .collect(),
            sealing_keys: keys
                .sealing_keys
                .into_iter()
                .map(|key| proto::SealingKey {
                    kid: key.kid,
                    key: Some(key.key),
                    created_at_unix: key.created_at_unix,
                    state: key_state_proto(key.state),
                })
                .collect(),
        }
    }
}

pub fn revoked_users_from_proto(
    users: Vec<proto::RevokedUser>,
) -> Result<RevokedUsers, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let mut parsed = RevokedUsers::new();
    for (index, user) in users.into_iter().enumerate() {
        let field = format!("revoked_users[{index}]");
        let idp = collect(
            &mut errors,
            &format!("{field}.identity_provider"),
            CatalogId::parse(&user.identity_provider),
        );
        let subject = collect(
            &mut errors,
            &format!("{field}.subject"),
            crate::names::UserId::parse(&user.subject),
        );
        if let (Some(idp), Some(subject)) = (idp, subject) {
            parsed.insert((idp, subject), user.revoked_at_unix);
        }
    }
    errors.into_result(parsed)
}

pub fn revoked_users_to_proto(users: &RevokedUsers) -> Vec<proto::RevokedUser> {
    users
        .iter()
        .map(|((idp, subject), at)| proto::RevokedUser {
            identity_provider: idp.to_string(),
            subject: subject.to_string(),
            revoked_at_unix: *at,
        })
        .collect()
}

pub fn revoked_grants_from_proto(
    grants: Vec<proto::RevokedGrant>,
) -> Result<RevokedGrants, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let mut parsed = RevokedGrants::new();
    for (index, grant) in grants.into_iter().enumerate() {
        if grant.grant_id.is_empty() || grant.grant_id.len() > 128 {
            errors.push(
                format!("revoked_grants[{index}].grant_id"),
                "must be 1 to 128 bytes",
            );
        } else {
            parsed.insert(grant.grant_id, grant.expires_at_unix);
        }
    }
    errors.into_result(parsed)
}

pub fn revoked_grants_to_proto(grants: &RevokedGrants) -> Vec<proto::RevokedGrant> {
    grants
        .iter()
        .map(|(grant_id, expires)| proto::RevokedGrant {
            grant_id: grant_id.clone(),
            expires_at_unix: *expires,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `jwks_parse` fuzz target: these were accepted here and refused by every
    /// node, which then could not apply a snapshot holding the server.
    #[test]
    fn a_jwks_needs_keys_a_node_verifies_with() {
        let rsa: serde_json::Value = serde_json::from_str(RSA_JWK).unwrap();
        let jwks = |key: &serde_json::Value| serde_json::json!({"keys": [key]}).to_string();
        assert!(check_jwks_json(&jwks(&rsa)).is_ok());
        for (field, value) in [
            ("use", serde_json::json!("enc")),
            ("key_ops", serde_json::json!(["sign"])),
            ("alg", serde_json::json!("ES256")),
            ("n", serde_json::json!("")),
            ("n", serde_json::json!("AQAB")),
        ] {
            let mut key = rsa.clone();
            key[field] = value;
            assert!(check_jwks_json(&jwks(&key)).is_err(), "{key}");
        }
        let many = serde_json::json!({"keys": vec![rsa; MAX_JWKS_KEYS + 1]}).to_string();
        assert!(check_jwks_json(&many).is_err());
    }

    /// A 2048-bit RSA public key (test material).
    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"fuzz-rsa","use":"sig","e":"AQAB","n":"mDB3ejbAGDZvJV5NiwbSLaMdrIHLIZvdTBvX_wD4h8bHAS1BJTdGdDVDObuAryBAs4S_Dzc6YjfBSqgbXBppmjdVJTgjRt2ltno-4D31VckNC7p4pjMI79bozPjw7sm6mJ-r9V87WlN5Eh6LoUGjh9bJEQPXbRzRzQj0_Nfkfg5oGv6-Yo0OcqorMi9l8v1Bfqzby8aanxrYw3WRuE0BGFZ0SH6jvW21AsSS9qvn6n5xUbrq3xZnzzQ_zY2wY1km_WlIe4fV0MXU_mAwi9ZC7Q1anqStjLI6vdQLvp1H99j9ZAQz1wDXO9XYP-jssQMMUnIi7kVy-eVTFBUIQO8xFQ"}"#;

    #[test]
    fn the_token_resource_is_kept_exactly_as_written() {
        let idp = |token_resource: &str| proto::IdentityProvider {
            id: "corp".to_owned(),
            display_name: "Corp".to_owned(),
            issuer: "https://idp.example.com".to_owned(),
            client_id: "gateway".to_owned(),
            token_resource: token_resource.to_owned(),
            ..proto::IdentityProvider::default()
        };
        for written in ["https://search.example.com", "https://api.example.com/v1/"] {
            let converted = IdentityProvider::try_from(idp(written)).unwrap();
            assert_eq!(converted.token_resource.as_deref(), Some(written));
        }
        assert_eq!(
            IdentityProvider::try_from(idp("")).unwrap().token_resource,
            None
        );
        let errors = IdentityProvider::try_from(idp("not a url")).unwrap_err();
        assert_eq!(errors.violations[0].field, "token_resource");
    }
}
