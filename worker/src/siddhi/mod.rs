//! Siddhi app parsing: `@app:name`, `define stream`, `define aggregation`, annotations.
