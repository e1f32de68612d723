//! Helpers shared by the test crates: the in-process gateway ([`Gateway::builder`]), its
//! backends by kind, tokens and API client, gateways as processes ([`GatewayProcess`]), a
//! TCP proxy that simulates a server restart ([`Proxy`]), HTTPS in front of a gateway
//! ([`TlsFront`], for clients that refuse plain HTTP such as cbapi), simulators of several
//! vendors behind one tenant ([`Vendors`]), and fresh PostgreSQL databases.

#![allow(dead_code, unused_imports)] // each test crate uses part of it

mod backend;
mod client;
mod gateway;
mod process;
mod proxy;
mod tls;
mod token;
mod vendors;
mod webhooks;

pub(crate) use backend::{Backend, spawn};
pub(crate) use client::Client;
pub(crate) use gateway::{Gateway, GatewayBuilder};
pub(crate) use process::GatewayProcess;
pub(crate) use proxy::Proxy;
pub(crate) use tls::TlsFront;
pub(crate) use token::{SECRET, SUBJECT, operator_token, scoped_token, token, token_as};
pub(crate) use vendors::{Settings, Vendors, carbonblack};
pub(crate) use webhooks::{Received, Receiver, read_events};

use sqlx::Connection as _;

/// The URL of a new, empty database on the test server (`EDRGATE_TEST_POSTGRES_URL`, which
/// `.ci/postgres` starts), or `None` after printing that `test` is skipped.
pub(crate) async fn fresh_postgres_database(test: &str) -> Option<String> {
    let Ok(base) = std::env::var("EDRGATE_TEST_POSTGRES_URL") else {
        // Straight to stderr, past the test harness's capture, so a plain `cargo test` shows it.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test} on PostgreSQL: EDRGATE_TEST_POSTGRES_URL is not set (.ci/postgres starts one)"
        );
        return None;
    };
    let name = format!("edrgate_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect to the test server");
    sqlx::query::<sqlx::Postgres>(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let (prefix, _) = base.rsplit_once('/').expect("a URL ending in a database name");
    Some(format!("{prefix}/{name}"))
}
