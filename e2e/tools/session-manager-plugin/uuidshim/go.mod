// The part of github.com/twinj/uuid's pre-1.0 API that session-manager-plugin uses.
module github.com/twinj/uuid

go 1.26.0
