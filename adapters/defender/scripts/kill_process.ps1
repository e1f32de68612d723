# edrgate helper: kill_process. -p is base64 JSON {"pid": n}.
param([string]$p = "")
$ErrorActionPreference = "Stop"
function Emit($o) { Write-Output ("EDRGATE-RESULT:" + ($o | ConvertTo-Json -Compress -Depth 6)) }
try {
    $a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($p)) | ConvertFrom-Json
    $proc = Get-Process -Id ([int]$a.pid) -ErrorAction SilentlyContinue
    if (-not $proc) {
        Emit ([ordered]@{ ok = $false; error = "not_found"; message = "No process with pid $($a.pid)"; hresult = "0x80070057" }); exit 1
    }
    Stop-Process -Id ([int]$a.pid) -Force
    Emit ([ordered]@{ ok = $true })
} catch [System.UnauthorizedAccessException] {
    Emit ([ordered]@{ ok = $false; error = "access_denied"; message = $_.Exception.Message; hresult = "0x80070005" }); exit 1
} catch {
    Emit ([ordered]@{ ok = $false; error = "command_failed"; message = $_.Exception.Message; hresult = ('0x{0:X8}' -f $_.Exception.HResult) }); exit 1
}
