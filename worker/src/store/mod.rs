//! SQL storage on SQLite, PostgreSQL and MySQL/MariaDB.
