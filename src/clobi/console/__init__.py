"""`clobi top`: an interactive terminal console over a session's queue, pools and manager
(needs the `console` extra: textual). `backend` holds the blocking work, `app` and `widgets`
the Textual side."""
