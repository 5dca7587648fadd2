// Package filewatch reports when any of a set of files has changed, so that
// a server can re-read its configuration, certificates and keys without a
// restart.
//
// A Watcher only signals; it never reads the files for its user. On each
// signal the user re-reads everything, validates it, and keeps the old state
// if anything is wrong.
//
// Files are rarely changed in place. Editors and command-line tools write a
// temporary file and rename it over the old one, and Kubernetes ConfigMap and
// Secret volumes swap a "..data" symlink to a new timestamped directory. A
// watch on the file itself would follow the old inode and go silent, so the
// Watcher watches the parent directories instead (and the directory of each
// symlink's final target), and treats every event there only as a hint: it
// then compares a fingerprint of each file with the last one it saw, and
// signals only if one differs. Files smaller than 1 MiB are fingerprinted by
// a SHA-256 of their content, so a rewrite with identical bytes (touch, a
// rename of an identical copy) is not a change, while a rewrite with new
// bytes is one even if size and modification time stay the same. Larger
// files are fingerprinted by size, modification time, device and inode, and
// the resolved symlink target.
//
// Bursts of events are debounced into one signal, and a slow periodic check
// covers file systems on which inotify misses changes, such as network
// mounts. A missing file is a valid state; its appearance is a change. A
// missing directory is watched through its nearest existing ancestor until
// it appears.
package filewatch
