//! Test helpers: a fresh, isolated database per test on every configured backend.
//!
//! SQLite gets a file in a new temporary directory; PostgreSQL and MySQL get
//! `CREATE DATABASE st_<random>` on the server named by the environment URL. [`TestDb::cleanup`]
//! removes it; a test that fails before cleaning up leaves it behind for inspection, and
//! `SHARDTALLY_TEST_KEEP_DB=1` keeps every one.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::PathBuf;

use shardtally_worker::store::{Backend, Store, with_database};
use sqlx::Connection;

/// Environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_ENV: &str = "SHARDTALLY_TEST_POSTGRES_URL";
/// Environment variable naming the MySQL/MariaDB server for tests.
pub const MYSQL_ENV: &str = "SHARDTALLY_TEST_MYSQL_URL";

/// The backends to test on: SQLite always, the others when their URL is set. With `CI=true` an
/// unset URL panics, so CI cannot silently skip a backend.
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    for (backend, var) in [
        (Backend::Postgres, POSTGRES_ENV),
        (Backend::MySql, MYSQL_ENV),
    ] {
        if server_url(var).is_some() {
            out.push(backend);
        } else if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {var} is not set: the {backend} tests cannot run");
        } else {
            eprintln!("note: {var} is not set; skipping the {backend} variant of this test");
        }
    }
    out
}

fn server_url(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// One fresh database.
pub struct TestDb {
    /// Its backend.
    pub backend: Backend,
    /// A URL connecting to it.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Database { admin_url: String, name: String },
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl TestDb {
    /// A new empty database on `backend`.
    pub async fn fresh(backend: Backend) -> TestDb {
        sqlx::any::install_default_drivers();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("shardtally-it-{}", random_suffix()));
                std::fs::create_dir_all(&dir).expect("create a temporary directory");
                TestDb {
                    backend,
                    url: format!("sqlite://{}", dir.join("shardtally.db").display()),
                    cleanup: Cleanup::Dir(dir),
                }
            }
            Backend::Postgres | Backend::MySql => {
                let var = if backend == Backend::Postgres {
                    POSTGRES_ENV
                } else {
                    MYSQL_ENV
                };
                let admin_url = server_url(var).expect("backends() checked the URL");
                let name = format!("st_{}", random_suffix());
                let mut admin = sqlx::AnyConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("connect to {var}: {e}"));
                sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|e| panic!("create database {name}: {e}"));
                admin.close().await.ok();
                TestDb {
                    backend,
                    url: with_database(&admin_url, &name),
                    cleanup: Cleanup::Database { admin_url, name },
                }
            }
        }
    }

    /// A store on this database (each call is a separate pool, like a separate worker).
    pub async fn store(&self) -> Store {
        Store::connect(&self.url, 4)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e:?}", self.url))
    }

    /// Removes the database (close its stores first), unless `SHARDTALLY_TEST_KEEP_DB=1` asks to
    /// keep it for inspection.
    pub async fn cleanup(self) {
        if std::env::var("SHARDTALLY_TEST_KEEP_DB").is_ok_and(|v| v == "1") {
            eprintln!("note: keeping test database {}", self.url);
            return;
        }
        match self.cleanup {
            Cleanup::Dir(dir) => {
                std::fs::remove_dir_all(&dir).ok();
            }
            Cleanup::Database { admin_url, name } => {
                let Ok(mut admin) = sqlx::AnyConnection::connect(&admin_url).await else {
                    return;
                };
                let sql = match self.backend {
                    Backend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS {name}"),
                };
                if let Err(e) = sqlx::raw_sql(&sql).execute(&mut admin).await {
                    eprintln!("note: could not drop test database {name}: {e}");
                }
                admin.close().await.ok();
            }
        }
    }
}

/// Runs `test` once per backend, each on a fresh database that is removed afterwards (and left
/// behind when the test panics).
pub async fn on_every_backend<F, Fut>(test: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = TestDb>,
{
    for backend in backends() {
        eprintln!("--- on {backend}");
        let db = TestDb::fresh(backend).await;
        let db = test(db).await;
        db.cleanup().await;
    }
}
