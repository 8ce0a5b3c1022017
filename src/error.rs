//! Errors that reach a SQL caller. Each carries a real SQLSTATE and, where the caller can act on
//! it, a hint. Flex failures inside a sync are not raised but reported in the summary (see
//! `sync.rs`); what is raised here is bad input, bad configuration or a database problem.

use flex_sync_core::ingest::BatchError;
use flex_sync_core::input::InputError;
use flex_sync_core::settings::{SettingsError, KNOWN_OPTIONS_HINT};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum FlexSyncError {
    #[error("job_id must not be NULL")]
    NullJob,
    #[error("job {0} does not exist")]
    UnknownJob(String),
    #[error("max_crew_calls must be from 1 to {max}, not {0}", max = crate::sync::MAX_DRIFT_CREW_CALLS)]
    BadCrewCallCount(String),
    #[error("invalid departments: {0}")]
    Departments(#[from] InputError),
    #[error("invalid ingest batch: {0}")]
    Batch(#[from] BatchError),
    #[error("invalid flex_sync settings: {0}")]
    Settings(#[from] SettingsError),
    #[error("flex_sync is not configured")]
    NotConfigured,
    #[error("no Flex API token is configured")]
    NoToken,
    #[error("the Vault secret {0:?} named by the option api_token_vault_secret was not found or is empty")]
    VaultSecretMissing(String),
    #[error("flex_sync_job cannot run in a {0} transaction")]
    IsolationLevel(String),
    #[error("table {0} is missing; the application schema is not installed")]
    MissingTable(String),
    #[error("flex_crew_assignments has no unique constraint on (crew_call_id, technician_id)")]
    NoUniqueConstraint,
    #[error("database error: {0}")]
    Spi(#[from] pgrx::spi::Error),
    #[error("unexpected result shape from the database: {0}")]
    Decode(String),
}

impl FlexSyncError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            FlexSyncError::NullJob => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            // Not no_data_found (P0002): PostgREST answers that with a 500, this is a 400.
            FlexSyncError::UnknownJob(_)
            | FlexSyncError::BadCrewCallCount(_)
            | FlexSyncError::Departments(_)
            | FlexSyncError::Batch(_)
            | FlexSyncError::Settings(_) => {
                ERRCODE_INVALID_PARAMETER_VALUE
            }
            FlexSyncError::NotConfigured | FlexSyncError::NoToken | FlexSyncError::VaultSecretMissing(_) => {
                ERRCODE_CONFIG_FILE_ERROR
            }
            FlexSyncError::IsolationLevel(_) => ERRCODE_INVALID_TRANSACTION_STATE,
            FlexSyncError::MissingTable(_) => ERRCODE_UNDEFINED_TABLE,
            FlexSyncError::NoUniqueConstraint => ERRCODE_INVALID_TABLE_DEFINITION,
            FlexSyncError::Spi(_) | FlexSyncError::Decode(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            FlexSyncError::Departments(_) => {
                Some("pass NULL for every department with a crew call, or names such as 'sound', 'lights', 'video'")
            }
            FlexSyncError::Batch(_) => Some(
                "send a JSON array of {\"op_id\", \"table\", \"local_id\", \"action\": \"upsert\" | \"delete\", \"data\"} \
                 with a distinct op_id each; nothing of this batch was applied",
            ),
            FlexSyncError::Settings(SettingsError::UnknownOption(_)) => Some(KNOWN_OPTIONS_HINT),
            FlexSyncError::Settings(SettingsError::TokenAndVaultSecret) => Some(
                "pass NULL as api_token to read the token from Vault, or set the option api_token_vault_secret \
                 to null to store the token given",
            ),
            FlexSyncError::Settings(SettingsError::BadUrl { .. }) => {
                Some("use https://<tenant>.flexrentalsolutions.com/f5/api")
            }
            FlexSyncError::NotConfigured => Some("call flex_sync_configure(base_url, api_token) first"),
            FlexSyncError::BadCrewCallCount(_) => {
                Some("each crew call checked costs one Flex call: give the number of calls this check may spend")
            }
            FlexSyncError::NoToken => Some(
                "store a Supabase Vault secret and name it in the option api_token_vault_secret, or pass api_token to \
                 flex_sync_configure (a restored dump holds no token: configure it again)",
            ),
            FlexSyncError::VaultSecretMissing(_) => Some(
                "create it (SELECT vault.create_secret($1, '<name>') with the key bound to $1), or name the secret \
                 that holds the key; a secret restored under another project's root key decrypts to nothing: \
                 create it again",
            ),
            FlexSyncError::IsolationLevel(_) => Some(
                "the sync takes a lock and must read what committed after it; call it in READ COMMITTED, \
                 or in its own transaction",
            ),
            FlexSyncError::MissingTable(_) => {
                Some("create the application tables, or run SELECT flex_sync_install_reference_schema()")
            }
            FlexSyncError::NoUniqueConstraint => Some(
                "run SELECT flex_dedupe_assignments() to remove duplicate rows and create the constraint",
            ),
            _ => None,
        }
    }

    /// Raises the error as a Postgres ERROR; does not return.
    pub fn raise(self, function: &'static str) -> ! {
        let hint = self.hint();
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), function);
        if let Some(hint) = hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
}

pub trait OrRaise<T> {
    fn or_raise(self, function: &'static str) -> T;
}

impl<T, E: Into<FlexSyncError>> OrRaise<T> for Result<T, E> {
    fn or_raise(self, function: &'static str) -> T {
        self.unwrap_or_else(|e| e.into().raise(function))
    }
}
