//! The results folder and console table (in progress).
