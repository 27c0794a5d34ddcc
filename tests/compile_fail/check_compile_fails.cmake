# Builds TARGET in BUILD_DIR and passes only if the build FAILS and its output matches every regex in EXPECT
# ("|||"-separated). A build that fails for another reason (a typo, a missing include) does not pass.
string(REPLACE "|||" ";" _expect "${EXPECT}")
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target "${TARGET}"
  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
set(_all "${_out}\n${_err}")
if(_rc EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not:\n${_all}")
endif()
foreach(_re IN LISTS _expect)
  if(NOT _all MATCHES "${_re}")
    message(FATAL_ERROR "${TARGET} failed to compile, but its errors do not mention '${_re}':\n${_all}")
  endif()
endforeach()
# Show the first error line: the one a user reads.
string(REGEX MATCH "error: [^\n]*" _first "${_all}")
message(STATUS "${TARGET}: failed as expected — ${_first}")
