# edrgate helper: registry reads and writes. -p is base64 JSON
# {"op": list|get|set|create_key|delete_key|delete_value, "key", "value", "type", "data", "overwrite"}.
param([string]$p = "")
$ErrorActionPreference = "Stop"
function Emit($o) { Write-Output ("EDRGATE-RESULT:" + ($o | ConvertTo-Json -Compress -Depth 6)) }
function Fail($word, $msg, $hr) { Emit ([ordered]@{ ok = $false; error = $word; message = $msg; hresult = $hr }); exit 1 }
$kinds = @{ String = "REG_SZ"; ExpandString = "REG_EXPAND_SZ"; MultiString = "REG_MULTI_SZ"; DWord = "REG_DWORD"; QWord = "REG_QWORD"; Binary = "REG_BINARY" }
$back = @{ REG_SZ = "String"; REG_EXPAND_SZ = "ExpandString"; REG_MULTI_SZ = "MultiString"; REG_DWORD = "DWord"; REG_QWORD = "QWord"; REG_BINARY = "Binary" }
function Val($k, $n) {
    $kind = $kinds[$k.GetValueKind($n).ToString()]
    $data = $k.GetValue($n, $null, 'DoNotExpandEnvironmentNames')
    if ($kind -eq "REG_BINARY") { $data = -join ($data | ForEach-Object { $_.ToString("x2") }) }
    [ordered]@{ name = $n; type = $kind; data = $data }
}
try {
    $a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($p)) | ConvertFrom-Json
    $path = "Registry::" + $a.key
    switch ($a.op) {
        "list" {
            if (-not (Test-Path -LiteralPath $path)) { Fail "file_not_found" "The system cannot find the registry key $($a.key)" "0x80070002" }
            $k = Get-Item -LiteralPath $path
            Emit ([ordered]@{ ok = $true; sub_keys = @($k.GetSubKeyNames()); values = @($k.GetValueNames() | ForEach-Object { Val $k $_ }) })
        }
        "get" {
            if (-not (Test-Path -LiteralPath $path)) { Fail "file_not_found" "The system cannot find the registry key $($a.key)" "0x80070002" }
            $k = Get-Item -LiteralPath $path
            if ($k.GetValueNames() -notcontains $a.value) { Fail "file_not_found" "The system cannot find the registry value $($a.value)" "0x80070002" }
            Emit ([ordered]@{ ok = $true; value = (Val $k $a.value) })
        }
        "set" {
            if (-not (Test-Path -LiteralPath $path)) { Fail "file_not_found" "The system cannot find the registry key $($a.key)" "0x80070002" }
            $k = Get-Item -LiteralPath $path
            if (-not $a.overwrite -and ($k.GetValueNames() -contains $a.value)) { Fail "conflict" "The registry value $($a.value) already exists" "0x800700B7" }
            $data = $a.data
            if ($a.type -eq "REG_BINARY") { $data = [byte[]] -split ($a.data -replace '..', '0x$& ') }
            New-ItemProperty -LiteralPath $path -Name $a.value -PropertyType $back[$a.type] -Value $data -Force | Out-Null
            Emit ([ordered]@{ ok = $true })
        }
        "create_key" { New-Item -Path $path -Force | Out-Null; Emit ([ordered]@{ ok = $true }) }
        "delete_key" {
            if (-not (Test-Path -LiteralPath $path)) { Fail "file_not_found" "The system cannot find the registry key $($a.key)" "0x80070002" }
            Remove-Item -LiteralPath $path -Recurse -Force; Emit ([ordered]@{ ok = $true })
        }
        "delete_value" {
            if (-not (Test-Path -LiteralPath $path)) { Fail "file_not_found" "The system cannot find the registry key $($a.key)" "0x80070002" }
            Remove-ItemProperty -LiteralPath $path -Name $a.value; Emit ([ordered]@{ ok = $true })
        }
        default { Fail "invalid_request" "unknown op $($a.op)" "" }
    }
} catch [System.Security.SecurityException] {
    Fail "access_denied" $_.Exception.Message "0x80070005"
} catch {
    Fail "command_failed" $_.Exception.Message ('0x{0:X8}' -f $_.Exception.HResult)
}
