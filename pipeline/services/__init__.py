"""Services behind the pages: one module per page, the only thing a page calls."""
