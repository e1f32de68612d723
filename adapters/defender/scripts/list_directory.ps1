# edrgate helper: list_directory. -p is base64 JSON {"path": "..."}.
param([string]$p = "")
$ErrorActionPreference = "Stop"
function Emit($o) { Write-Output ("EDRGATE-RESULT:" + ($o | ConvertTo-Json -Compress -Depth 6)) }
function Unix($t) { [int64](($t.ToUniversalTime() - [datetime]'1970-01-01Z').TotalSeconds) }
try {
    $a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($p)) | ConvertFrom-Json
    $path = $a.path.TrimEnd('*').TrimEnd('\')
    if ($path -match '^[A-Za-z]:$') { $path += '\' }
    if (-not (Test-Path -LiteralPath $path -PathType Container)) {
        Emit ([ordered]@{ ok = $false; error = "file_not_found"; message = "The system cannot find the path specified: $($a.path)"; hresult = "0x80070003" }); exit 1
    }
    $entries = Get-ChildItem -LiteralPath $path -Force | ForEach-Object {
        [ordered]@{ name = $_.Name; dir = $_.PSIsContainer; size = [uint64]($(if ($_.PSIsContainer) { 0 } else { $_.Length }));
            attrs = @($_.Attributes.ToString().Split(',') | ForEach-Object { $_.Trim().ToUpper() });
            created = (Unix $_.CreationTime); modified = (Unix $_.LastWriteTime); accessed = (Unix $_.LastAccessTime) }
    }
    Emit ([ordered]@{ ok = $true; entries = @($entries) })
} catch [System.UnauthorizedAccessException] {
    Emit ([ordered]@{ ok = $false; error = "access_denied"; message = $_.Exception.Message; hresult = "0x80070005" }); exit 1
} catch {
    Emit ([ordered]@{ ok = $false; error = "command_failed"; message = $_.Exception.Message; hresult = ('0x{0:X8}' -f $_.Exception.HResult) }); exit 1
}
