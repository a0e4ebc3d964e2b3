"""Data: sources → manifest (path, label, patient, split) → patient-grouped split → decoded uint8 cache →
study data, and the leakage audit. May import: config, storage. No model code (no train/), no Ray."""
