// Package e2e holds Herald's end-to-end tests: the real gateway and worker
// binaries, built by the tests, run as processes against a private
// redis-server, behind a real nginx configured from the same template as the
// compose stack (deploy/nginx/herald.conf.template), and driven by headless
// Chromium through chromedp. A test that fails saves screenshots and process
// logs under e2e/artifacts/ (or $HERALD_ARTIFACTS) and logs their paths.
//
// The npm test packs the browser client (web/) with npm, installs it into a
// scratch project with typescript and esbuild from the npm registry, and
// runs a typed Node program against a real gateway with it.
//
// The compose tests check docker-compose.yml and the Dockerfile against the
// code, since Docker is not available where the tests run.
//
// `make test` installs what these tests need (redis-server, nginx, chromium, node, npm)
// when it is missing. Without one of them a test is skipped, except under CI
// (CI set), where it fails.
package e2e
