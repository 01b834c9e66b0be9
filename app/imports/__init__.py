"""Bulk imports from another deployment (users, settings, profile types): one reader of rows,
one batch driver, one summary; each domain says only how a row is checked and written."""
