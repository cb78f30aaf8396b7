"""A stand-in for an n8n workflow: receives the bridge's envelopes and answers
`message.received` through `/send-response`, as a real workflow would. For tests and
`make run` without n8n; controllable through `/_standin/*`."""
